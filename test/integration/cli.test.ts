/**
 * The command line as an admin runs it: `exgate check` against the real DC, the demo config,
 * broken files, `exgate explain` (groups whatever decides, usage errors), and the gateway over
 * LDAPS and StartTLS; every command's --help; the command as deployed (a link, never npx).
 */
import { execFile } from 'node:child_process';
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { USERS } from '../helpers/ad-fixtures.js';
import { INTERNAL, send, startHarness, TEST_POLICY, type Harness } from '../helpers/gateway-harness.js';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..', '..');
const EXGATE = join(ROOT, 'bin', 'exgate.js');

async function exgate(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [EXGATE, ...args], { timeout: 30_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('exgate check', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ directory: 'ldap' });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('prints ok for a good config whose groups all exist in AD', async () => {
    const r = await exgate('check', '--config', h.configFile);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^config: ok\n(.*: (ok|skipped).*\n)+ok\n$/);
  });

  it('prints ok for the shipped demo config', async () => {
    // --offline: the demo's Exchange stand-in runs only inside `exgate demo`.
    const r = await exgate(
      'check',
      '--offline',
      '--config',
      join(import.meta.dirname, '..', '..', 'config', 'demo.yaml'),
    );
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/\nok\n$/);
  });

  it('names a group that does not exist, with file, line and key, and exits 1', async () => {
    writeFileSync(
      join(h.dir, 'policy.yaml'),
      TEST_POLICY.replace('groups: [AllowExternalAccess]', 'groups: [AllowExternalAcess]'),
    );
    try {
      const r = await exgate('check', '--config', h.configFile);
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(
        /policy\.yaml:\d+: rules\[1\]\.allow\.groups\[0\]: group AllowExternalAcess not found in the directory/,
      );
    } finally {
      writeFileSync(join(h.dir, 'policy.yaml'), TEST_POLICY);
    }
  });

  it('reports every config problem at once', async () => {
    const bad = join(h.dir, 'bad.yaml');
    writeFileSync(bad, 'listen: { port: 99999, hots: x }\nnames: { external: [] }\npolicyFile: nope.yaml\n');
    const r = await exgate('check', '--config', bad);
    expect(r.code).toBe(1);
    const lines = r.stdout.trim().split('\n');
    expect(lines.length).toBeGreaterThanOrEqual(5);
    expect(r.stdout).toContain('listen.hots: unknown key');
    expect(r.stdout).toContain('listen.port:');
    expect(r.stdout).toContain('names.external: needs at least one name');
    expect(r.stdout).toContain('tls: is required');
    expect(r.stdout).not.toContain('Adm1n');
  });

  it('reports an unreachable directory without a secret in the message', async () => {
    const conf = join(h.dir, 'dead-dc.yaml');
    writeFileSync(
      conf,
      readFileSync(h.configFile, 'utf8').replace(/url: ldap:\/\/127\.0\.0\.1:389/, 'url: ldap://127.0.0.1:1'),
    );
    const r = await exgate('check', '--config', conf);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/directory.*(ECONNREFUSED|failed)/);
    expect(r.stdout).toMatch(
      /policy\.yaml: groups and users not resolved against the directory: the directory is unreachable\n/,
    );
    expect(r.stdout + r.stderr).not.toContain('Svc-Exg4te');
  });

  it("reports a policy's schema, structure and unknown groups together, against AD", async () => {
    writeFileSync(
      join(h.dir, 'policy.yaml'),
      TEST_POLICY.replace('services: [rpc, ecp,', 'services: [rpc, outlook-anywhere, ecp,')
        .replace('groups: [AllowExternalAccess]', 'groups: [AllowExternalAcess]')
        .replace('  - id: mobile', '  - id: outlook') + '  - id: undecided\n    services: [owa]\n',
    );
    try {
      const r = await exgate('check', '--config', h.configFile);
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(/policy\.yaml:\d+: rules\[3\]\.services\[1\]: must be one of/);
      expect(r.stdout).toMatch(/policy\.yaml:\d+: rules\[2\]\.id: duplicate rule id outlook/);
      expect(r.stdout).toMatch(/policy\.yaml:\d+: rules\[4\]: a rule has exactly one of allow and deny/);
      expect(r.stdout).toMatch(
        /policy\.yaml:\d+: rules\[1\]\.allow\.groups\[0\]: group AllowExternalAcess not found in the directory/,
      );
      expect(
        r.stdout
          .trim()
          .split('\n')
          .filter((l) => l.startsWith('/')),
      ).toHaveLength(4);
    } finally {
      writeFileSync(join(h.dir, 'policy.yaml'), TEST_POLICY);
    }
  });

  it("checks the policy's structure when the gateway config is broken, and says its groups were not resolved", async () => {
    const bad = join(h.dir, 'bad-with-policy.yaml');
    writeFileSync(bad, readFileSync(h.configFile, 'utf8').replace(/^tls:/m, 'tsl:'));
    writeFileSync(join(h.dir, 'policy.yaml'), TEST_POLICY.replace('  - id: mobile', '  - id: outlook'));
    try {
      const r = await exgate('check', '--config', bad);
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(/bad-with-policy\.yaml:\d+: tsl: unknown key/);
      expect(r.stdout).toMatch(/policy\.yaml:\d+: rules\[2\]\.id: duplicate rule id outlook/);
      expect(r.stdout).toMatch(
        /policy\.yaml: groups and users not resolved against the directory: the gateway config has errors\n/,
      );
      // serve still refuses on any problem: the config's, and the policy's alone.
      expect((await exgate('serve', '--config', bad)).code).toBe(1);
      const alone = await exgate('serve', '--config', h.configFile);
      expect(alone.code).toBe(1);
      expect(alone.stderr).toContain('duplicate rule id outlook');
    } finally {
      writeFileSync(join(h.dir, 'policy.yaml'), TEST_POLICY);
    }
  });

  it('serve refuses a broken config with the problems and exit 1', async () => {
    const bad = join(h.dir, 'bad2.yaml');
    writeFileSync(bad, 'listen: { port: 0 }\n');
    const r = await exgate('serve', '--config', bad);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/bad2\.yaml:1: tls: is required/);
  });

  it('answers an unknown command with usage and exit 2', async () => {
    const r = await exgate('frobnicate');
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('usage: exgate');
  });
});

describe('help', () => {
  /** The commands `exgate --help` lists, read from its own text. */
  const listed = async () => [...(await exgate('--help')).stdout.matchAll(/^  ([a-z][a-z-]+)/gm)].map((m) => m[1]!);

  it('lists every command', async () => {
    expect((await listed()).sort()).toEqual([
      'check',
      'demo',
      'explain',
      'hash-password',
      'help',
      'mailbox-flags',
      'report',
      'serve',
      'version',
    ]);
  });

  it("exgate <command> --help prints that command's usage and exits 0, for every command", async () => {
    const commands = await listed();
    const answers = await Promise.all(commands.map((command) => exgate(command, '--help')));
    commands.forEach((command, i) => {
      expect(answers[i], command).toMatchObject({ code: 0, stderr: '' });
      expect(answers[i]!.stdout, command).toMatch(new RegExp(`^usage: exgate ${command}\\b`));
    });
    expect((await exgate('demo', '-h')).stdout).toBe(answers[commands.indexOf('demo')]!.stdout);
    expect((await exgate('help', 'check')).stdout).toBe(answers[commands.indexOf('check')]!.stdout);
  });

  it('--help wins over missing or wrong arguments', async () => {
    const flags = await exgate('mailbox-flags', 'plan', '--help');
    expect(flags).toMatchObject({ code: 0, stdout: expect.stringMatching(/^usage: exgate mailbox-flags/) });
    const explained = await exgate('explain', '--user', 'alice', '-h');
    expect(explained).toMatchObject({ code: 0, stdout: expect.stringMatching(/^usage: exgate explain/) });
  });

  it('a missing --config or an extra argument is a usage error (exit 2), not a crash', async () => {
    const serve = await exgate('serve');
    expect(serve.code).toBe(2);
    expect(serve.stderr).toMatch(/^exgate serve: --config FILE is required\n\nusage: exgate serve --config FILE/);
    expect((await exgate('check', '--confg', 'x')).stderr).toContain('usage: exgate check');
    const demo = await exgate('demo', 'now');
    expect(demo).toMatchObject({ code: 2, stderr: expect.stringContaining('exgate demo: unexpected argument "now"') });
  });
});

describe('the command as deployed', () => {
  it('runs through a link, as /usr/local/bin/exgate, from another folder, without npx', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'exgate-bin-'));
    try {
      symlinkSync(EXGATE, join(dir, 'exgate'));
      const { stdout } = await run(join(dir, 'exgate'), ['check', '--help'], { cwd: dir });
      expect(stdout).toMatch(/^usage: exgate check --config FILE/);
      const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
      expect((await run(join(dir, 'exgate'), ['version'], { cwd: tmpdir() })).stdout).toBe(`${pkg.version}\n`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the README, the config files and the units never run npx exgate', () => {
    const files = [
      'README.md',
      'config/gateway.example.yaml',
      'config/policy.example.yaml',
      'config/demo-users.yaml',
      'deploy/exgate.service',
      'deploy/exgate-mailbox-flags.service',
      'deploy/exgate-mailbox-flags.timer',
    ];
    const npx = /npx (-y |--yes )?exgate\s+[a-z-]/;
    for (const f of files) expect(readFileSync(join(ROOT, f), 'utf8'), f).not.toMatch(npx);
  });

  it('the units run the linked command, not a node path a Node 20 install may lack', () => {
    for (const unit of ['exgate.service', 'exgate-mailbox-flags.service']) {
      const text = readFileSync(join(ROOT, 'deploy', unit), 'utf8');
      expect(text.match(/^ExecStart=(\S+)/m)?.[1], unit).toBe('/usr/local/bin/exgate');
      expect(text, unit).toMatch(/^Environment=PATH=\/opt\/node\/bin:.*:\/usr\/bin:/m);
    }
  });

  it('the package ships dist/, deploy/ and scripts/ (npm pack)', async () => {
    const { stdout } = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT });
    const files = (JSON.parse(stdout) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path);
    expect(files).toEqual(
      expect.arrayContaining([
        'bin/exgate.js',
        'dist/cli.js',
        'deploy/exgate.service',
        'deploy/exgate-mailbox-flags.service',
        'scripts/exchange-session.ps1',
        'scripts/prepare.mjs',
        'config/gateway.example.yaml',
      ]),
    );
  });

  it('prepare under --omit=dev keeps a built dist/, and refuses a missing or stale one', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'exgate-prepare-'));
    try {
      // No node_modules here, so no TypeScript: what `npm ci --omit=dev` leaves.
      mkdirSync(join(dir, 'scripts'));
      mkdirSync(join(dir, 'src'));
      copyFileSync(join(ROOT, 'scripts', 'prepare.mjs'), join(dir, 'scripts', 'prepare.mjs'));
      writeFileSync(join(dir, 'package.json'), '{"type":"module"}');
      writeFileSync(join(dir, 'src', 'cli.ts'), '');
      const prepare = () =>
        run(process.execPath, [join(dir, 'scripts', 'prepare.mjs')]).then(
          () => ({ code: 0, stderr: '' }),
          (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
        );
      expect(await prepare()).toMatchObject({ code: 1, stderr: expect.stringContaining('dist/ is not built') });
      mkdirSync(join(dir, 'dist'));
      writeFileSync(join(dir, 'dist', 'cli.js'), '');
      expect(await prepare()).toEqual({ code: 0, stderr: '' });
      utimesSync(join(dir, 'src', 'cli.ts'), new Date(), new Date(Date.now() + 60_000)); // a git pull since
      expect(await prepare()).toMatchObject({ code: 1, stderr: expect.stringContaining('dist/ is older than src/') });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('invalid configs of issue 10: named, never a TypeError', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'exgate-cli-config-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  /** The demo config, its files named absolutely so that it can live elsewhere. */
  const demo = () =>
    readFileSync(join(ROOT, 'config', 'demo.yaml'), 'utf8')
      .replace('path: demo-users.yaml', `path: ${join(ROOT, 'config', 'demo-users.yaml')}`)
      .replace('policyFile: demo-policy.yaml', `policyFile: ${join(ROOT, 'config', 'demo-policy.yaml')}`)
      .replaceAll('../certs/', `${dir}/`);
  /** `<file>:<line>: <key>: <message>` lines. */
  const located = (out: string, file: string) =>
    out
      .split('\n')
      .map((l) => l.replace(/^exgate: /, ''))
      .filter((l) => l.startsWith(`${file}:`))
      .map((l) => l.slice(file.length).replace(/^:\d+: /, ''));

  it.each([
    [
      'listen.proxyProtocol: true and an unknown key beside admin',
      (y: string) => y.replace('listen:\n', 'listen:\n  proxyProtocol: true\n') + 'status: {}\nadmin: { port: 9191 }\n',
      ['listen.proxyProtocol: expected object, received boolean', 'status: unknown key'],
    ],
    [
      'services.mapi.auth: forms',
      (y: string) => `${y}services: { mapi: { auth: forms } }\n`,
      ['services.mapi.auth: must be one of "basic", "ntlm", "basic+ntlm"'],
    ],
  ])('%s: check and serve name each key with file and line', async (_, edit, expected) => {
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, edit(demo()));
    const checked = await exgate('check', '--config', file);
    const served = await exgate('serve', '--config', file);
    expect(checked.code).toBe(1);
    expect(served.code).toBe(1);
    expect(located(checked.stdout, file).sort()).toEqual(expected);
    expect(located(served.stderr, file).sort()).toEqual(expected);
  });
});

describe('exgate explain', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ directory: 'ldap' });
  });
  afterAll(async () => {
    await h?.close();
  });
  const json = async (...args: string[]) => {
    const r = await exgate('explain', '--config', h.configFile, '--json', ...args);
    expect(r).toMatchObject({ code: 0, stderr: '' });
    return JSON.parse(r.stdout) as {
      decision: string;
      reason: string;
      rule: string | null;
      user: string;
      groups: string[];
      account: string | null;
    };
  };

  it('shows the groups of a user on a service denied to everyone; the deny stays the decision', async () => {
    expect(await json('--user', 'carol', '--service', 'rpc')).toMatchObject({
      decision: 'deny',
      reason: 'denied-by-rule',
      rule: 'no-legacy-no-admin',
      user: 'LAB\\carol',
      groups: expect.arrayContaining(['AllowExternalAccess', 'ExternalStaff']),
    });
  });

  it('shows the groups of a user asking by an internal name; misdirected stays the decision', async () => {
    const a = await json('--user', 'alice@lab.test', '--service', 'owa', '--name', INTERNAL);
    expect(a).toMatchObject({
      decision: 'deny',
      reason: 'misdirected',
      rule: null,
      user: 'LAB\\alice',
      groups: expect.arrayContaining(['AllowExternalAccess']),
    });
    expect(a.account).toMatch(/^CN=Alice Anders,/);
  });

  it('a user who does not exist still gets the early refusal, with no groups', async () => {
    expect(await json('--user', 'nobody', '--service', 'rpc')).toMatchObject({
      decision: 'deny',
      reason: 'denied-by-rule',
      user: 'LAB\\nobody',
      groups: [],
      account: null,
    });
  });

  it('the demo: alice on rpc shows her groups in the text output', async () => {
    const r = await exgate(
      'explain',
      '--config',
      join(import.meta.dirname, '..', '..', 'config', 'demo.yaml'),
      '--user',
      'alice',
      '--service',
      'rpc',
    );
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^groups +AllowExternalAccess, ExternalStaff$/m);
    expect(r.stdout).toMatch(/^decision DENY +reason denied-by-rule +rule no-legacy-no-admin$/m);
  });

  it.each(['notanip', '1.2.3', '', '[::1]'])('refuses --ip %j as a usage error (exit 2)', async (ip) => {
    const r = await exgate('explain', '--config', h.configFile, '--user', 'alice', '--service', 'owa', `--ip=${ip}`);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`exgate explain: --ip ${JSON.stringify(ip)} is not an IPv4 or IPv6 address`);
    expect(r.stderr).toContain('usage: exgate explain');
  });

  it.each(['192.0.2.7', '2001:db8::1'])('accepts --ip %s', async (ip) => {
    expect((await json('--user', 'alice', '--service', 'owa', '--ip', ip)).decision).toBe('allow');
  });
});

describe.each(['ldaps', 'starttls'] as const)('the gateway over %s', (kind) => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ directory: kind });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('allows alice and refuses bob', async () => {
    expect((await send(h, '/owa/', { user: 'alice', password: USERS.alice.password })).status).toBe(200);
    expect((await send(h, '/owa/', { user: 'bob', password: USERS.bob.password })).status).toBe(403);
    expect((await send(h, '/owa/', { user: 'carol', password: 'wrong' })).status).toBe(401);
  });
});
