/**
 * The mailbox-flags plan (pure) and the PowerShell it becomes: tables of users, groups and current
 * flags → the changes, idempotence, the share of mailboxes blocked, and quoting of awkward names.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import type { Account } from '../../src/directory/directory.js';
import { FileDirectory } from '../../src/directory/file.js';
import { plan, type CasFlag, type FlagRule } from '../../src/mailbox-flags/plan.js';
import { byMailbox, changeScript, quote, readScript, setLine } from '../../src/mailbox-flags/powershell.js';
import { loadPolicy, type Policy } from '../../src/policy/compile.js';

const HASH = 'scrypt$1024$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=';
const MAPI: Partial<Record<CasFlag, FlagRule>> = {
  MAPIBlockOutlookRpcHttp: { service: 'mapi', allowedValue: false },
  MAPIBlockOutlookExternalConnectivity: { service: 'mapi', allowedValue: false },
};

let dir: string;
let policy: Policy;
let directory: FileDirectory;
let mailboxes: readonly Account[];
let memberships: Map<string, Set<string>>;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'exgate-mbx-'));
  writeFileSync(
    join(dir, 'users.yaml'),
    stringify({
      users: {
        alice: { password: HASH, name: 'Alice Anders', mail: 'alice@lab.test' },
        carol: { password: HASH, name: 'Carol Cole', mail: 'carol@lab.test' },
        bob: { password: HASH, name: 'Bob Berg', mail: 'bob@lab.test' },
        obrien: { password: HASH, name: "Seán O'Brien", mail: 'sean.obrien@lab.test' },
        nomail: { password: HASH },
      },
      groups: {
        AllowExternalAccess: { members: ['alice', 'ExternalStaff', 'obrien'] },
        ExternalStaff: { members: ['carol'] },
      },
    }),
  );
  writeFileSync(
    join(dir, 'policy.yaml'),
    'rules:\n  - id: outlook\n    services: [mapi, ews]\n    allow: { groups: [AllowExternalAccess] }\n',
  );
  directory = FileDirectory.load({
    type: 'file',
    path: join(dir, 'users.yaml'),
    baseDn: 'DC=lab,DC=test',
    netbiosDomain: 'LAB',
    upnSuffixes: ['lab.test'],
  });
  policy = await loadPolicy(join(dir, 'policy.yaml'), directory, { netbios: 'LAB', upnSuffixes: ['lab.test'] });
  mailboxes = await directory.listMailboxes();
  memberships = new Map();
  for (const g of policy.groupDns)
    for (const u of await directory.membersOf(g)) memberships.set(u, new Set([...(memberships.get(u) ?? []), g]));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const state = (v: boolean | null) => ({ MAPIBlockOutlookRpcHttp: v, MAPIBlockOutlookExternalConnectivity: v });
const currentOf = (values: Record<string, boolean | null>) =>
  new Map(mailboxes.map((m) => [m.dn.toLowerCase(), state(values[m.sam] ?? false)]));

describe('plan', () => {
  it('lists only users with mail, and reads nested membership', () => {
    expect(mailboxes.map((m) => m.sam).sort()).toEqual(['alice', 'bob', 'carol', 'obrien']);
    const p = plan({ mailboxes, current: currentOf({}), memberships, policy, flags: MAPI });
    expect(p.changes.map((c) => [c.identity.split(',')[0], c.flag, c.from, c.to])).toEqual([
      ['CN=Bob Berg', 'MAPIBlockOutlookRpcHttp', false, true],
      ['CN=Bob Berg', 'MAPIBlockOutlookExternalConnectivity', false, true],
    ]);
    expect(p).toMatchObject({ total: 4, blocked: 1 });
    expect(p.changes[0]?.reason).toBe('not allowed mapi from outside (not-allowed)');
  });

  it('re-enables a user who joined the group (the old script never did)', () => {
    const p = plan({ mailboxes, current: currentOf({ alice: true, bob: true }), memberships, policy, flags: MAPI });
    expect(p.changes.map((c) => [c.identity.split(',')[0], c.to, c.reason])).toEqual([
      ['CN=Alice Anders', false, 'allowed mapi from outside by rule outlook'],
      ['CN=Alice Anders', false, 'allowed mapi from outside by rule outlook'],
    ]);
    expect(p.blocked).toBe(0);
  });

  it('is idempotent: a plan over its own result is empty', () => {
    const first = plan({ mailboxes, current: currentOf({ alice: true }), memberships, policy, flags: MAPI });
    const after = currentOf({ alice: true });
    for (const c of first.changes)
      (after.get(c.identity.toLowerCase()) as Record<string, boolean | null>)[c.flag] = c.to;
    expect(plan({ mailboxes, current: after, memberships, policy, flags: MAPI }).changes).toEqual([]);
  });

  it('leaves alone mailboxes Exchange does not report, and counts them', () => {
    const current = currentOf({});
    current.delete(mailboxes.find((m) => m.sam === 'bob')!.dn.toLowerCase());
    const p = plan({ mailboxes, current, memberships, policy, flags: MAPI });
    expect(p.changes).toEqual([]);
    expect(p.missing).toEqual([mailboxes.find((m) => m.sam === 'bob')!.dn]);
  });

  it('drives ActiveSyncEnabled and OWAEnabled from their services when mapped', () => {
    const flags = {
      ActiveSyncEnabled: { service: 'activesync', allowedValue: true },
      EwsEnabled: { service: 'ews', allowedValue: true },
    } as const;
    const current = new Map(mailboxes.map((m) => [m.dn.toLowerCase(), { ActiveSyncEnabled: true, EwsEnabled: true }]));
    const p = plan({ mailboxes, current, memberships, policy, flags });
    // nobody is allowed activesync (no rule): every mailbox loses it; only bob loses EWS
    expect(p.changes.filter((c) => c.flag === 'ActiveSyncEnabled').length).toBe(4);
    expect(p.changes.filter((c) => c.flag === 'EwsEnabled').map((c) => c.identity.split(',')[0])).toEqual([
      'CN=Bob Berg',
    ]);
  });
});

describe('PowerShell', () => {
  it.each([
    ["O'Brien", "'O''Brien'"],
    ['Seán O\u2019Brien', "'Seán O\u2019\u2019Brien'"],
    ['a\u2018b\u201ac\u201bd', "'a\u2018\u2018b\u201a\u201ac\u201b\u201bd'"],
    ['CN=Alice Anders,CN=Users,DC=lab,DC=test', "'CN=Alice Anders,CN=Users,DC=lab,DC=test'"],
    ['$(Remove-Mailbox x)', "'$(Remove-Mailbox x)'"],
  ])('quotes %j safely', (text, quoted) => {
    expect(quote(text)).toBe(quoted);
  });

  it('refuses to quote a line break (it would end the command)', () => {
    expect(() => quote('a\nSet-CASMailbox -Identity x')).toThrow(/control character/);
  });

  it('writes one Set-CASMailbox line per mailbox, all its flags on it, and a result line after each', () => {
    const changes = byMailbox([
      {
        identity: "CN=Seán O'Brien,CN=Users,DC=lab,DC=test",
        flag: 'MAPIBlockOutlookRpcHttp',
        from: false,
        to: true,
        reason: 'r',
        blocks: true,
      },
      {
        identity: "CN=Seán O'Brien,CN=Users,DC=lab,DC=test",
        flag: 'MAPIBlockOutlookExternalConnectivity',
        from: false,
        to: true,
        reason: 'r',
        blocks: true,
      },
    ]);
    expect(setLine(changes[0]!)).toBe(
      "Set-CASMailbox -Identity 'CN=Seán O''Brien,CN=Users,DC=lab,DC=test' -MAPIBlockOutlookRpcHttp:$true -MAPIBlockOutlookExternalConnectivity:$true",
    );
    expect(changeScript(changes, 'n0nce', 7).split('\n')).toEqual([
      "$ErrorActionPreference = 'Continue'",
      '$exgateErrors = $Error.Count',
      "Set-CASMailbox -Identity 'CN=Seán O''Brien,CN=Users,DC=lab,DC=test' -MAPIBlockOutlookRpcHttp:$true -MAPIBlockOutlookExternalConnectivity:$true",
      "if ($Error.Count -eq $exgateErrors) { 'exgate-ok n0nce 7' } else { 'exgate-failed n0nce 7'; $Error[0].Exception.Message }",
      '',
    ]);
    expect(readScript(['MAPIBlockOutlookRpcHttp'])).toContain(
      'Get-CASMailbox -ResultSize Unlimited | Select-Object DistinguishedName,MAPIBlockOutlookRpcHttp | ConvertTo-Json -Depth 2 -Compress',
    );
  });
});
