// Tests for the Exchange shell stand-in (scripts/exchange-shell-standin.mjs): a test-only fake of
// `pwsh` with an Exchange session, used as the mailbox-flags runner. Each test runs it as a child
// process with the script on stdin and a state file in a fresh temp dir.
import { spawn } from 'node:child_process';
import {
  accessSync,
  constants,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

const STANDIN = resolve(import.meta.dirname, '../../scripts/exchange-shell-standin.mjs');
const FLAGS = [
  'MAPIBlockOutlookRpcHttp',
  'MAPIBlockOutlookExternalConnectivity',
  'ActiveSyncEnabled',
  'EwsEnabled',
  'OWAEnabled',
] as const;
type Flag = (typeof FLAGS)[number];

interface Mailbox {
  Identity?: string;
  UserPrincipalName?: string;
  [key: string]: unknown;
}
interface State {
  mailboxes: Record<string, Mailbox>;
  failIdentities?: string[];
  failRead?: boolean;
  calls?: { identity: string; flags: Partial<Record<Flag, boolean>> }[];
  [key: string]: unknown;
}
interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

const OU = 'OU=Staff,DC=contoso,DC=test';
const ALICE_DN = `CN=Alice Smith,${OU}`;
const OBRIEN_DN = `CN=Pat O'Brien,${OU}`;
const SEAN_DN = `CN=Seán Ó Briain,${OU}`;
const DARCY_DN = `CN=Jo D’Arcy,${OU}`; // U+2019 in the name

const open = (): Omit<Mailbox, 'Identity'> => ({
  MAPIBlockOutlookRpcHttp: false,
  MAPIBlockOutlookExternalConnectivity: false,
  ActiveSyncEnabled: true,
  EwsEnabled: true,
  OWAEnabled: true,
});
const mailboxes = (): Record<string, Mailbox> => ({
  [ALICE_DN]: { Identity: 'Alice Smith', UserPrincipalName: 'alice@contoso.test', ...open() },
  [OBRIEN_DN]: { Identity: "Pat O'Brien", UserPrincipalName: 'pobrien@contoso.test', ...open() },
  [SEAN_DN]: { Identity: 'Seán Ó Briain', UserPrincipalName: 'seán@contoso.test', ...open() },
  [DARCY_DN]: { Identity: 'Jo D’Arcy', UserPrincipalName: 'jdarcy@contoso.test', ...open() },
});

/** PowerShell single-quoting as exgate must do it: every quote character doubled. */
const psQuote = (s: string): string => `'${s.replace(/['\u2018\u2019\u201a\u201b]/g, (q) => q + q)}'`;

let dir: string;
let statePath: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'exchange-shell-standin-'));
  statePath = join(dir, 'state.json');
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function writeState(state: State): void {
  writeFileSync(statePath, JSON.stringify(state, null, 2));
}
function readState(): Required<Pick<State, 'mailboxes' | 'calls' | 'failIdentities'>> & State {
  return JSON.parse(readFileSync(statePath, 'utf8'));
}

function run(script: string | Buffer, args: string[] = [statePath], command: string = process.execPath): Promise<Run> {
  const argv = command === process.execPath ? [STANDIN, ...args] : args;
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code, stdout, stderr }));
    child.stdin.end(script);
  });
}

/** Runs with the four standard mailboxes (plus overrides) and returns the run and the state after it. */
async function runWith(
  script: string,
  extra: Partial<State> = {},
): Promise<{ r: Run; state: ReturnType<typeof readState> }> {
  writeState({ mailboxes: mailboxes(), failIdentities: [], calls: [], ...extra });
  const r = await run(script);
  return { r, state: readState() };
}

const GET = (props: string, tail = '-Depth 3') =>
  `Get-CASMailbox -ResultSize Unlimited | Select-Object ${props} | ConvertTo-Json ${tail}`;
const IF_OK = "if ($?) { 'ok' } else { 'failed' }";

describe('the file itself', () => {
  it('is an executable Node script with a shebang and says it is a stand-in', async () => {
    const text = readFileSync(STANDIN, 'utf8');
    expect(text.startsWith('#!/usr/bin/env node\n')).toBe(true);
    expect(text.slice(0, 400)).toMatch(/STAND-IN.*NOT PowerShell/);
    accessSync(STANDIN, constants.X_OK);
    writeState({ mailboxes: mailboxes() });
    const r = await run("Write-Output 'hello'\n", [statePath], STANDIN); // through the shebang
    expect(r).toEqual({ code: 0, stdout: 'hello\n', stderr: '' });
  });

  it('exits 2 on a usage error or an unreadable state file', async () => {
    const none = await run('', []);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/usage/);
    const missing = await run('', [join(dir, 'nope.json')]);
    expect(missing.code).toBe(2);
    writeFileSync(statePath, '{"mailboxes": [');
    expect((await run('')).code).toBe(2);
    writeFileSync(statePath, '{"mailboxes": []}');
    expect((await run('')).code).toBe(2);
  });
});

describe('Get-CASMailbox | Select-Object | ConvertTo-Json', () => {
  it('prints an array with exactly the selected properties, in order, for several mailboxes', async () => {
    const { r } = await runWith(GET('DistinguishedName,UserPrincipalName, MAPIBlockOutlookRpcHttp ,EwsEnabled'));
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    const parsed = JSON.parse(r.stdout);
    expect(Array.isArray(parsed)).toBe(true);
    expect(parsed).toHaveLength(4);
    expect(parsed[0]).toEqual({
      DistinguishedName: ALICE_DN,
      UserPrincipalName: 'alice@contoso.test',
      MAPIBlockOutlookRpcHttp: false,
      EwsEnabled: true,
    });
    expect(Object.keys(parsed[0])).toEqual([
      'DistinguishedName',
      'UserPrincipalName',
      'MAPIBlockOutlookRpcHttp',
      'EwsEnabled',
    ]);
    expect(parsed.map((m: { DistinguishedName: string }) => m.DistinguishedName)).toEqual([
      ALICE_DN,
      OBRIEN_DN,
      SEAN_DN,
      DARCY_DN,
    ]);
    expect(r.stdout).toBe(JSON.stringify(parsed, null, 2) + '\n'); // indented, like PowerShell 7
  });

  it('selects like Select-Object: no DistinguishedName unless asked, unknown properties null, names case-insensitive', async () => {
    const { r } = await runWith(GET('-Property identity,NoSuchProperty,owaenabled', '-Compress -Depth 2'));
    expect(r.code).toBe(0);
    const parsed = JSON.parse(r.stdout);
    expect(parsed[1]).toEqual({ Identity: "Pat O'Brien", NoSuchProperty: null, OWAEnabled: true });
    expect(r.stdout).toBe(JSON.stringify(parsed) + '\n'); // -Compress: one line
  });

  it('prints a single object, not an array, for exactly one mailbox (ConvertTo-Json quirk)', async () => {
    writeState({
      mailboxes: { [SEAN_DN]: { Identity: 'Seán Ó Briain', UserPrincipalName: 'seán@contoso.test', ...open() } },
    });
    const r = await run(GET('DistinguishedName,UserPrincipalName,ActiveSyncEnabled', '-Depth 3 -Compress'));
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({
      DistinguishedName: SEAN_DN,
      UserPrincipalName: 'seán@contoso.test',
      ActiveSyncEnabled: true,
    });
  });

  it('prints nothing at all for no mailboxes', async () => {
    writeState({ mailboxes: {} });
    const r = await run(`${GET('DistinguishedName')}\n${IF_OK}\n`);
    expect(r).toEqual({ code: 0, stdout: 'ok\n', stderr: '' });
  });

  it('reads a flag missing from the state as the Exchange default', async () => {
    writeState({ mailboxes: { [ALICE_DN]: { Identity: 'Alice Smith' } } });
    const r = await run(GET(FLAGS.join(','), '-Compress'));
    expect(JSON.parse(r.stdout)).toEqual({
      MAPIBlockOutlookRpcHttp: false,
      MAPIBlockOutlookExternalConnectivity: false,
      ActiveSyncEnabled: true,
      EwsEnabled: true,
      OWAEnabled: true,
    });
  });

  it('fails (no output, $? false) when the state says failRead', async () => {
    const { r } = await runWith(`${GET('DistinguishedName')}\n${IF_OK}\n`, { failRead: true });
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('failed\n');
    expect(r.stderr).toMatch(/^Get-CASMailbox: .*failRead/);
  });
});

describe('Set-CASMailbox', () => {
  it.each(FLAGS.flatMap((flag) => [true, false].map((value) => [flag, value] as const)))(
    'sets %s to %s and records the call',
    async (flag, value) => {
      const start = mailboxes();
      start[ALICE_DN]![flag] = !value;
      writeState({ mailboxes: start, calls: [] });
      const r = await run(`Set-CASMailbox -Identity '${ALICE_DN}' -${flag}:$${value}\n${IF_OK}\n`);
      expect(r).toEqual({ code: 0, stdout: 'ok\n', stderr: '' });
      const state = readState();
      expect(state.mailboxes[ALICE_DN]).toEqual({ ...start[ALICE_DN], [flag]: value });
      for (const dn of [OBRIEN_DN, SEAN_DN, DARCY_DN]) expect(state.mailboxes[dn]).toEqual(start[dn]);
      expect(state.calls).toEqual([{ identity: ALICE_DN, flags: { [flag]: value } }]);
    },
  );

  it('sets several flags on one line (names and $true/$false case-insensitive)', async () => {
    const { r, state } = await runWith(
      `Set-CASMailbox -Identity '${ALICE_DN}' -MAPIBlockOutlookRpcHttp:$true -mapiblockoutlookexternalconnectivity:$TRUE\t-OWAEnabled:$False\n`,
    );
    expect(r).toEqual({ code: 0, stdout: '', stderr: '' });
    expect(state.mailboxes[ALICE_DN]).toMatchObject({
      MAPIBlockOutlookRpcHttp: true,
      MAPIBlockOutlookExternalConnectivity: true,
      OWAEnabled: false,
      EwsEnabled: true,
    });
    expect(state.calls).toEqual([
      {
        identity: ALICE_DN,
        flags: { MAPIBlockOutlookRpcHttp: true, MAPIBlockOutlookExternalConnectivity: true, OWAEnabled: false },
      },
    ]);
  });

  it("finds O'Brien with the quote doubled, by DN, UPN or Identity", async () => {
    const script = [
      `Set-CASMailbox -Identity ${psQuote(OBRIEN_DN)} -MAPIBlockOutlookRpcHttp:$true`,
      IF_OK,
      `Set-CASMailbox -Identity ${psQuote("pat o'brien")} -EwsEnabled:$false`, // Identity, other case
      IF_OK,
      `Set-CASMailbox -Identity 'POBRIEN@contoso.test' -OWAEnabled:$false`, // UPN, other case
      IF_OK,
    ].join('\n');
    expect(psQuote(OBRIEN_DN)).toBe("'CN=Pat O''Brien,OU=Staff,DC=contoso,DC=test'");
    const { r, state } = await runWith(script);
    expect(r).toEqual({ code: 0, stdout: 'ok\nok\nok\n', stderr: '' });
    expect(state.mailboxes[OBRIEN_DN]).toMatchObject({
      MAPIBlockOutlookRpcHttp: true,
      EwsEnabled: false,
      OWAEnabled: false,
    });
    expect(state.calls.map((c) => c.identity)).toEqual([OBRIEN_DN, "pat o'brien", 'POBRIEN@contoso.test']);
  });

  it("does not find O'Brien when the quote is not doubled (the string ends there)", async () => {
    const { r, state } = await runWith(`Set-CASMailbox -Identity '${OBRIEN_DN}' -EwsEnabled:$false\n`);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^stand-in: unsupported line 1: /);
    expect(state.calls).toEqual([]);
  });

  it('handles names with spaces and non-ASCII characters (Seán Ó Briain)', async () => {
    const script = [
      `Set-CASMailbox -Identity ${psQuote(SEAN_DN)} -ActiveSyncEnabled:$false`,
      IF_OK,
      `Set-CASMailbox -Identity 'SEÁN@contoso.test' -EwsEnabled:$false`,
      IF_OK,
      "Write-Output 'done: Seán'",
    ].join('\r\n');
    const { r, state } = await runWith(script);
    expect(r).toEqual({ code: 0, stdout: 'ok\nok\ndone: Seán\n', stderr: '' });
    expect(state.mailboxes[SEAN_DN]).toMatchObject({ ActiveSyncEnabled: false, EwsEnabled: false });
    expect(state.calls[0]!.identity).toBe(SEAN_DN);
  });

  it("treats the typographic quotes like ' : doubled ’ is a literal ’, a lone one ends the string", async () => {
    expect(psQuote(DARCY_DN)).toBe("'CN=Jo D’’Arcy,OU=Staff,DC=contoso,DC=test'");
    const { r, state } = await runWith(
      [
        `Set-CASMailbox -Identity ${psQuote(DARCY_DN)} -MAPIBlockOutlookRpcHttp:$true`,
        IF_OK,
        // Opened with ‘ and closed with ’, as PowerShell allows.
        `Set-CASMailbox -Identity ‘Jo D’’Arcy’ -EwsEnabled:$false`,
        IF_OK,
      ].join('\n'),
    );
    expect(r).toEqual({ code: 0, stdout: 'ok\nok\n', stderr: '' });
    expect(state.mailboxes[DARCY_DN]).toMatchObject({ MAPIBlockOutlookRpcHttp: true, EwsEnabled: false });
    expect(state.calls.map((c) => c.identity)).toEqual([DARCY_DN, 'Jo D’Arcy']);

    // A lone ’ inside ends the string early: the rest of the line is not understood.
    const lone = await runWith(`Set-CASMailbox -Identity '${DARCY_DN}' -EwsEnabled:$false\n`);
    expect(lone.r.code).toBe(1);
    expect(lone.r.stderr).toMatch(/^stand-in: unsupported line 1: /);
  });

  it('keeps the second character of a mixed doubled quote, like PowerShell', async () => {
    // '' → '   ’' → '   '’ → ’   ‛‚ → ‚
    const { r } = await runWith(`Write-Output 'a''b’'c'’d‛‚e'\nWrite-Output ‚x‛\n`);
    expect(r).toEqual({ code: 0, stdout: "a'b'c’d‚e\nx\n", stderr: '' });
  });

  it('warns (on stdout, like Exchange) when nothing actually changed, and still succeeds', async () => {
    const { r, state } = await runWith(`Set-CASMailbox -Identity 'alice@contoso.test' -EwsEnabled:$true\n${IF_OK}\n`);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      "WARNING: The command completed successfully but no settings of 'Alice Smith' have been modified.\nok\n",
    );
    expect(state.calls).toEqual([{ identity: 'alice@contoso.test', flags: { EwsEnabled: true } }]);
  });

  it('reports an unknown identity, sets $? false and goes on with the next lines', async () => {
    const script = [
      "$ErrorActionPreference = 'Continue'",
      "Set-CASMailbox -Identity 'CN=Nobody,DC=contoso,DC=test' -EwsEnabled:$false",
      "if ($?) { 'ok nobody' } else { 'failed nobody' }",
      "if ($?) { 'the if itself succeeded' } else { 'no' }",
      `Set-CASMailbox -Identity '${ALICE_DN}' -EwsEnabled:$false`,
      "if ($?) { 'ok alice' } else { 'failed alice' }",
    ].join('\n');
    const { r, state } = await runWith(script);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('failed nobody\nthe if itself succeeded\nok alice\n');
    expect(r.stderr).toBe(
      "Set-CASMailbox: Couldn't find object 'CN=Nobody,DC=contoso,DC=test'. Please make sure that it was spelled correctly or specify a different object.\n",
    );
    expect(state.mailboxes[ALICE_DN]!.EwsEnabled).toBe(false);
    expect(state.calls).toEqual([{ identity: ALICE_DN, flags: { EwsEnabled: false } }]);
  });

  it('counts errors with $Error like PowerShell: a mark before each change, the newest message after a failure', async () => {
    const check = "if ($Error.Count -eq $exgateErrors) { 'ok' } else { 'failed';  $Error[0].Exception.Message }";
    const script = [
      "$ErrorActionPreference = 'Continue'",
      '$exgateErrors = $Error.Count',
      "Set-CASMailbox -Identity 'CN=Nobody,DC=contoso,DC=test' -EwsEnabled:$false",
      check,
      '$exgateErrors = $Error.Count',
      `Set-CASMailbox -Identity '${ALICE_DN}' -EwsEnabled:$false`,
      check.replace(/ +/g, ' '),
    ].join('\n');
    const { r, state } = await runWith(script);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      "failed\nCouldn't find object 'CN=Nobody,DC=contoso,DC=test'. Please make sure that it was spelled correctly or specify a different object.\nok\n",
    );
    expect(state.calls).toEqual([{ identity: ALICE_DN, flags: { EwsEnabled: false } }]);
  });

  it('refuses an $Error check in another shape (the generated script has exactly one)', async () => {
    const { r } = await runWith(
      "if ($Error.Count -gt $exgateErrors) { 'x' } else { 'y'; $Error[0].Exception.Message }",
    );
    expect(r.code).not.toBe(0);
    expect(r.stdout).toBe('');
  });

  it('fails for failIdentities (by DN or UPN, whichever name is used) and leaves them unchanged', async () => {
    const before = mailboxes();
    const script = [
      `Set-CASMailbox -Identity '${ALICE_DN}' -MAPIBlockOutlookRpcHttp:$true`,
      IF_OK,
      "Set-CASMailbox -Identity 'Alice Smith' -OWAEnabled:$false", // listed by DN, addressed by Identity
      IF_OK,
      `Set-CASMailbox -Identity ${psQuote(OBRIEN_DN)} -MAPIBlockOutlookRpcHttp:$true`, // listed by UPN
      IF_OK,
      `Set-CASMailbox -Identity ${psQuote(SEAN_DN)} -MAPIBlockOutlookRpcHttp:$true`,
      IF_OK,
    ].join('\n');
    const { r, state } = await runWith(script, { failIdentities: [ALICE_DN, 'POBRIEN@contoso.test'] });
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('failed\nfailed\nfailed\nok\n');
    expect(r.stderr.trim().split('\n')).toHaveLength(3);
    expect(r.stderr).toMatch(/^Set-CASMailbox: stand-in: injected failure for 'CN=Alice Smith,/);
    expect(state.mailboxes[ALICE_DN]).toEqual(before[ALICE_DN]);
    expect(state.mailboxes[OBRIEN_DN]).toEqual(before[OBRIEN_DN]);
    expect(state.mailboxes[SEAN_DN]!.MAPIBlockOutlookRpcHttp).toBe(true);
    expect(state.calls).toEqual([{ identity: SEAN_DN, flags: { MAPIBlockOutlookRpcHttp: true } }]);
    expect(state.failIdentities).toEqual([ALICE_DN, 'POBRIEN@contoso.test']);
  });

  it('rejects an unknown or repeated flag at run time ($? false, nothing changed)', async () => {
    const before = mailboxes();
    const { r, state } = await runWith(
      [
        `Set-CASMailbox -Identity '${ALICE_DN}' -EwsEnabled:$false -PopEnabled:$false`,
        IF_OK,
        `Set-CASMailbox -Identity '${ALICE_DN}' -EwsEnabled:$false -ewsenabled:$true`,
        IF_OK,
      ].join('\n'),
    );
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('failed\nfailed\n');
    expect(r.stderr).toMatch(/parameter name 'PopEnabled'/);
    expect(r.stderr).toMatch(/parameter 'EwsEnabled' is specified more than once/);
    expect(state.mailboxes[ALICE_DN]).toEqual(before[ALICE_DN]);
    expect(state.calls).toEqual([]);
  });

  it('refuses an identity that matches several mailboxes', async () => {
    const boxes = mailboxes();
    boxes[SEAN_DN]!.Identity = 'Alice Smith';
    const { r, state } = await runWith(`Set-CASMailbox -Identity 'alice smith' -EwsEnabled:$false\n${IF_OK}\n`, {
      mailboxes: boxes,
    });
    expect(r.stdout).toBe('failed\n');
    expect(r.stderr).toMatch(/matches multiple entries/);
    expect(state.calls).toEqual([]);
  });

  it("with $ErrorActionPreference = 'Stop' the first error ends the script (exit 1), earlier changes kept", async () => {
    const { r, state } = await runWith(
      [
        "$ErrorActionPreference = 'Stop'",
        `Set-CASMailbox -Identity '${ALICE_DN}' -EwsEnabled:$false`,
        "Write-Output 'after alice'",
        "Set-CASMailbox -Identity 'nobody' -EwsEnabled:$false",
        "Write-Output 'after nobody'",
        `Set-CASMailbox -Identity ${psQuote(SEAN_DN)} -EwsEnabled:$false`,
      ].join('\n'),
    );
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('after alice\n');
    expect(r.stderr).toMatch(/Couldn't find object 'nobody'/);
    expect(state.mailboxes[ALICE_DN]!.EwsEnabled).toBe(false);
    expect(state.mailboxes[SEAN_DN]!.EwsEnabled).toBe(true);
    expect(state.calls).toHaveLength(1);
  });
});

describe('state file', () => {
  it('is replaced atomically (new inode, no temp file left), other keys kept, calls appended in order', async () => {
    writeState({
      note: 'kept',
      mailboxes: mailboxes(),
      calls: [{ identity: 'earlier', flags: { OWAEnabled: true } }],
    });
    const inodeBefore = statSync(statePath).ino;
    const r = await run(
      [
        `Set-CASMailbox -Identity '${ALICE_DN}' -EwsEnabled:$false`,
        `Set-CASMailbox -Identity ${psQuote(DARCY_DN)} -OWAEnabled:$false -ActiveSyncEnabled:$false`,
        '',
      ].join('\n'),
    );
    expect(r.code).toBe(0);
    expect(statSync(statePath).ino).not.toBe(inodeBefore);
    expect(readdirSync(dir)).toEqual(['state.json']);
    const state = readState();
    expect(state.note).toBe('kept');
    expect(state.calls).toEqual([
      { identity: 'earlier', flags: { OWAEnabled: true } },
      { identity: ALICE_DN, flags: { EwsEnabled: false } },
      { identity: DARCY_DN, flags: { OWAEnabled: false, ActiveSyncEnabled: false } },
    ]);
  });

  it('is not touched when the script is refused', async () => {
    writeState({ mailboxes: mailboxes(), calls: [] });
    const before = readFileSync(statePath);
    const inodeBefore = statSync(statePath).ino;
    const r = await run(`Set-CASMailbox -Identity '${ALICE_DN}' -EwsEnabled:$false\nRemove-Mailbox -Identity 'x'\n`);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(readFileSync(statePath)).toEqual(before);
    expect(statSync(statePath).ino).toBe(inodeBefore);
  });
});

describe('script syntax', () => {
  it('accepts blank lines, # comments, a BOM, CRLF and surrounding whitespace', async () => {
    const script =
      '\uFEFF# exgate mailbox-flags batch 1\r\n\r\n   \r\n  # indented comment\r\n' +
      `  $ErrorActionPreference='Continue'  \r\n\tWrite-Output 'x'\r\nif($?){'y'}else{'z'}\r\n`;
    const { r } = await runWith(script);
    expect(r).toEqual({ code: 0, stdout: 'x\ny\n', stderr: '' });
  });

  it.each([
    ['an unterminated identity', "Set-CASMailbox -Identity 'CN=Alice Smith -EwsEnabled:$false"],
    ['an unterminated typographic string', 'Set-CASMailbox -Identity ‘Alice Smith -EwsEnabled:$false'],
    ['an unterminated if text', "if ($?) { 'ok } else { 'failed' }"],
    ['an unterminated Write-Output', "Write-Output 'abc"],
    ['text after the last flag', "Set-CASMailbox -Identity 'alice@contoso.test' -EwsEnabled:$false extra"],
    ['a ; after the last flag', "Set-CASMailbox -Identity 'alice@contoso.test' -EwsEnabled:$false; if ($?) { 'ok' }"],
    ['a trailing comment', "Set-CASMailbox -Identity 'alice@contoso.test' -EwsEnabled:$false # why"],
    ['a flag without the colon', "Set-CASMailbox -Identity 'alice@contoso.test' -EwsEnabled $false"],
    ['a flag value that is not $true/$false', "Set-CASMailbox -Identity 'alice@contoso.test' -EwsEnabled:0"],
    ['no space between parameters', "Set-CASMailbox -Identity 'alice@contoso.test'-EwsEnabled:$false"],
    ['no flag at all', "Set-CASMailbox -Identity 'alice@contoso.test'"],
    ['a double-quoted identity', 'Set-CASMailbox -Identity "alice@contoso.test" -EwsEnabled:$false'],
    ['an unquoted identity', 'Set-CASMailbox -Identity alice@contoso.test -EwsEnabled:$false'],
    ['parameters in another order', "Set-CASMailbox -EwsEnabled:$false -Identity 'alice@contoso.test'"],
    ['another cmdlet', "Set-Mailbox -Identity 'alice@contoso.test' -HiddenFromAddressListsEnabled:$true"],
    ['Get-CASMailbox without Select-Object', 'Get-CASMailbox -ResultSize Unlimited | ConvertTo-Json -Depth 3'],
    [
      'Get-CASMailbox without -ResultSize',
      'Get-CASMailbox | Select-Object DistinguishedName | ConvertTo-Json -Depth 3',
    ],
    ['a wildcard property', 'Get-CASMailbox -ResultSize Unlimited | Select-Object * | ConvertTo-Json -Depth 3'],
    [
      'a property selected twice',
      'Get-CASMailbox -ResultSize Unlimited | Select-Object EwsEnabled,ewsenabled | ConvertTo-Json',
    ],
    [
      'an unknown ConvertTo-Json parameter',
      'Get-CASMailbox -ResultSize Unlimited | Select-Object EwsEnabled | ConvertTo-Json -AsArray',
    ],
    ['another ErrorActionPreference', "$ErrorActionPreference = 'SilentlyContinue'"],
    ['an if on something other than $?', "if ($x) { 'a' } else { 'b' }"],
    ['a bare string', "'hello'"],
    ['a block comment', '<# comment #>'],
  ])('rejects %s with exit 1 and runs nothing', async (_what, line) => {
    const { r, state } = await runWith(`Write-Output 'first'\n${IF_OK}\n${line}\n`);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.startsWith(`stand-in: unsupported line 3: ${line} (`)).toBe(true);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(state.calls).toEqual([]);
  });

  it('rejects a script that is not UTF-8', async () => {
    writeState({ mailboxes: mailboxes() });
    const r = await run(Buffer.from([0x57, 0x72, 0xff, 0x0a]));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/UTF-8/);
  });
});
