/**
 * exgate mailbox-flags against the real Samba DC (mailboxes and transitive group members) and the
 * Exchange shell stand-in (scripts/exchange-shell-standin.mjs: NOT Exchange; it understands the
 * exact PowerShell exgate writes and keeps CASMailbox state in a JSON file).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Attribute, Client } from 'ldapts';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { stringify } from 'yaml';
import { createGroup, createUser, setGroupMember } from '../helpers/ad-admin.js';
import { ADMIN, DOMAIN, SERVICE_ACCOUNT, USERS, type TestUser } from '../helpers/ad-fixtures.js';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..', '..');
const ldapUrl = inject('ldapUrl');
let dir: string;

interface State {
  mailboxes: Record<string, Record<string, unknown>>;
  failIdentities: string[];
  calls: { identity: string; flags: Record<string, boolean> }[];
  failRead?: boolean;
}

const stateFile = () => join(dir, 'state.json');
const readState = (): State => JSON.parse(readFileSync(stateFile(), 'utf8')) as State;
const writeState = (s: Partial<State>) =>
  writeFileSync(stateFile(), JSON.stringify({ failIdentities: [], calls: [], ...s }, null, 2));

/** Every fixture user as an Exchange mailbox, all flags at Exchange's defaults unless given. */
function mailboxes(blocked: string[] = [], extra: { dn: string; sam: string }[] = []): State['mailboxes'] {
  const out: State['mailboxes'] = {};
  for (const u of [...(Object.values(USERS) as TestUser[]), ...extra]) {
    const b = blocked.includes(u.sam);
    out[u.dn] = {
      Identity: u.sam,
      UserPrincipalName: `${u.sam}@${DOMAIN.dnsName}`,
      MAPIBlockOutlookRpcHttp: b,
      MAPIBlockOutlookExternalConnectivity: b,
    };
  }
  return out;
}

function writeConfig(name: string, policy: string, extra: Record<string, unknown> = {}): string {
  writeFileSync(join(dir, `${name}-policy.yaml`), policy);
  const file = join(dir, `${name}.yaml`);
  writeFileSync(
    file,
    stringify({
      tls: { cert: 'gw.crt', key: 'gw.key', selfSigned: true },
      names: { external: ['mail.lab.test'] },
      upstream: { url: 'https://127.0.0.1:9', insecureSkipVerify: true },
      directory: {
        type: 'ldap',
        url: ldapUrl,
        bindDn: SERVICE_ACCOUNT.dn,
        bindPasswordFile: 'bind-password',
        baseDn: DOMAIN.baseDn,
        netbiosDomain: DOMAIN.netbios,
        upnSuffixes: [DOMAIN.dnsName],
        connectTimeoutMs: 1000,
        timeoutMs: 3000,
      },
      policyFile: `${name}-policy.yaml`,
      mailboxFlags: {
        runner: [process.execPath, join(ROOT, 'scripts', 'exchange-shell-standin.mjs'), stateFile()],
        maxBlockShare: 0.5,
      },
      ...extra,
    }),
  );
  return file;
}

const POLICY = 'rules:\n  - id: outlook\n    services: [mapi, ews]\n    allow: { groups: [AllowExternalAccess] }\n';

async function exgate(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [join(ROOT, 'bin', 'exgate.js'), 'mailbox-flags', ...args], {
      timeout: 60_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const flagsOf = (dn: string) => {
  const m = readState().mailboxes[dn]!;
  return [m.MAPIBlockOutlookRpcHttp, m.MAPIBlockOutlookExternalConnectivity];
};

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'exgate-mbx-it-'));
  writeFileSync(join(dir, 'bind-password'), SERVICE_ACCOUNT.password);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('mailbox-flags plan and apply', () => {
  it('plans from transitive group membership: blocks outsiders, re-enables members, with the exact PowerShell', async () => {
    const config = writeConfig('basic', POLICY);
    writeState({ mailboxes: mailboxes(['carol', 'obrien']) });
    const json = await exgate('plan', '--config', config, '--json');
    expect(json.code).toBe(0);
    const { changes } = JSON.parse(json.stdout) as {
      changes: { identity: string; flag: string; from: boolean; to: boolean; reason: string }[];
    };
    const who = (dn: string) => changes.filter((c) => c.identity === dn);
    expect(who(USERS.bob.dn).map((c) => [c.flag, c.from, c.to])).toEqual([
      ['MAPIBlockOutlookRpcHttp', false, true],
      ['MAPIBlockOutlookExternalConnectivity', false, true],
    ]);
    expect(who(USERS.carol.dn).map((c) => c.to)).toEqual([false, false]); // nested member, re-enabled
    expect(who(USERS.carol.dn)[0]?.reason).toBe('allowed mapi from outside by rule outlook');
    expect(who(USERS.alice.dn)).toEqual([]);
    const text = await exgate('plan', '--config', config);
    expect(text.stdout).toContain(
      `Set-CASMailbox -Identity '${USERS.bob.dn}' -MAPIBlockOutlookRpcHttp:$true -MAPIBlockOutlookExternalConnectivity:$true`,
    );
    expect(text.stdout).toContain("Set-CASMailbox -Identity 'CN=Seán O''Brien,CN=Users,DC=lab,DC=test'");
    expect(readState().calls).toEqual([]); // plan changes nothing
  });

  it('applies, reports each mailbox, and a second run plans nothing (idempotent)', async () => {
    const config = writeConfig('basic', POLICY);
    writeState({ mailboxes: mailboxes(['carol']) });
    const first = await exgate('apply', '--config', config);
    expect(first.code).toBe(0);
    expect(first.stdout).toMatch(/ok {5}CN=Bob Berg/);
    expect(flagsOf(USERS.bob.dn)).toEqual([true, true]);
    expect(flagsOf(USERS.carol.dn)).toEqual([false, false]);
    expect(flagsOf(USERS.obrien.dn)).toEqual([false, false]);
    const again = await exgate('plan', '--config', config, '--json');
    expect(JSON.parse(again.stdout).changes).toEqual([]);
    expect((await exgate('apply', '--config', config)).stdout).toMatch(/^nothing to change/);
  });

  it('re-enables a user added to the group and blocks a user removed from it', async () => {
    const config = writeConfig('basic', POLICY);
    const joiner = await createUser(ldapUrl, `joiner${Date.now() % 100000}`, 'J0iner-Passw0rd!');
    const leaver = await createUser(ldapUrl, `leaver2${Date.now() % 100000}`, 'L3aver-Passw0rd!', [
      'AllowExternalAccess',
    ]);
    writeState({ mailboxes: mailboxes([], [joiner, leaver]) });
    expect((await exgate('apply', '--config', config)).code).toBe(0);
    expect(flagsOf(joiner.dn)).toEqual([true, true]);
    expect(flagsOf(leaver.dn)).toEqual([false, false]);
    await setGroupMember(ldapUrl, 'add', 'AllowExternalAccess', joiner.dn);
    await setGroupMember(ldapUrl, 'delete', 'AllowExternalAccess', leaver.dn);
    expect((await exgate('apply', '--config', config)).code).toBe(0);
    expect(flagsOf(joiner.dn)).toEqual([false, false]);
    expect(flagsOf(leaver.dn)).toEqual([true, true]);
  });

  it('refuses to apply when an allow group resolves to no member, even with --force', async () => {
    await createGroup(ldapUrl, `EmptyAllow${Date.now() % 100000}`).then(async (dn) => {
      const name = dn.split(',')[0]!.slice(3);
      const config = writeConfig(
        'empty',
        `rules:\n  - id: outlook\n    services: [mapi]\n    allow: { groups: [${name}] }\n`,
      );
      writeState({ mailboxes: mailboxes() });
      const r = await exgate('apply', '--config', config, '--force');
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`policy group ${name} resolves to no member`);
      expect(readState().calls).toEqual([]);
    });
  });

  it('refuses when the directory or the Exchange read fails', async () => {
    const dead = writeConfig('dead', POLICY);
    writeFileSync(dead, readFileSync(dead, 'utf8').replace(ldapUrl, 'ldap://127.0.0.1:1'));
    writeState({ mailboxes: mailboxes() });
    const down = await exgate('apply', '--config', dead, '--force');
    expect(down.code).toBe(1);
    expect(readState().calls).toEqual([]);
    const config = writeConfig('basic', POLICY);
    writeState({ mailboxes: mailboxes(), failRead: true });
    const noRead = await exgate('apply', '--config', config, '--force');
    expect(noRead.code).toBe(1);
    expect(noRead.stderr).toMatch(/Exchange read failed/);
  });

  it('refuses a plan that would block more than maxBlockShare, unless --force', async () => {
    const config = writeConfig(
      'share',
      'rules:\n  - id: mobile-only\n    services: [mapi]\n    allow: { groups: [MobileUsers] }\n',
      {},
    );
    writeFileSync(config, readFileSync(config, 'utf8').replace('maxBlockShare: 0.5', 'maxBlockShare: 0.1'));
    writeState({ mailboxes: mailboxes() });
    const refused = await exgate('apply', '--config', config);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/more than maxBlockShare 0\.1; --force/);
    expect(readState().calls).toEqual([]);
    const forced = await exgate('apply', '--config', config, '--force');
    expect(forced.code).toBe(0);
    expect(flagsOf(USERS.alice.dn)).toEqual([true, true]);
    expect(flagsOf(USERS.henry.dn)).toEqual([false, false]);
  });

  it('carries on past a mailbox that fails, and exits 1', async () => {
    const config = writeConfig('basic', POLICY);
    writeState({ mailboxes: mailboxes(['alice', 'carol']), failIdentities: [USERS.alice.dn] });
    const r = await exgate('apply', '--config', config);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/FAILED CN=Alice Anders[^\n]*injected failure/);
    expect(flagsOf(USERS.carol.dn)).toEqual([false, false]);
    expect(flagsOf(USERS.bob.dn)).toEqual([true, true]);
  });

  it('quotes awkward names: an apostrophe, spaces, non-ASCII and a typographic quote', async () => {
    const c = new Client({ url: ldapUrl });
    const dn = `CN=Zoë D’Arcy-Ó Súilleabháin,${DOMAIN.usersDn}`;
    await c.bind(ADMIN.upn, ADMIN.password);
    await c.add(dn, [
      new Attribute({ type: 'objectClass', values: ['top', 'person', 'organizationalPerson', 'user'] }),
      new Attribute({ type: 'sAMAccountName', values: [`darcy${Date.now() % 100000}`] }),
      new Attribute({ type: 'mail', values: ['zoe.darcy@lab.test'] }),
    ]);
    await c.unbind();
    const config = writeConfig('basic', POLICY);
    writeState({ mailboxes: mailboxes([], [{ dn, sam: 'darcy' }]) });
    const r = await exgate('apply', '--config', config);
    expect(r.code).toBe(0);
    expect(flagsOf(dn)).toEqual([true, true]);
    expect(flagsOf(USERS.obrien.dn)).toEqual([false, false]);
    const calls = readState().calls.map((x) => x.identity);
    expect(calls).toContain(dn);
  });
});
