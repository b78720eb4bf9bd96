// loadConfig (src/config/load.ts): golden error fixtures, defaults, the INTERFACE.md example, and the
// bind password's Secret. Each test/fixtures/configs/<case>.yaml with a <case>.expected.txt must fail
// with exactly that ConfigError text, the fixtures folder written as `<dir>`.
// The files the fixtures point at live in test/fixtures/configs/support/.
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inspect } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig, type Config } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';

const FIXTURES = resolve(dirname(fileURLToPath(import.meta.url)), '../fixtures/configs');
const ENV_PASSWORD = 'env-Secret-Pa55!';
const FILE_PASSWORD = 'file-secret-Pa55'; // support/bind-password.txt, without its newline
const ENV = { EXGATE_BIND_PASSWORD: ENV_PASSWORD };

const fixture = (name: string) => join(FIXTURES, name);

/** The ConfigError text of loading `file`, with `dir` written as `<dir>`; fails if it loads. */
function errorText(file: string, env: NodeJS.ProcessEnv, dir = FIXTURES): string {
  try {
    loadConfig(file, env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.message.split(dir + '/').join('<dir>/');
  }
  throw new Error(`${file} loaded without error`);
}

/** Cases whose problems may come in any order (the fix decides the order). */
const ANY_ORDER = new Set(['several-problems-mixed']);

const goldenCases = readdirSync(FIXTURES)
  .filter((f) => f.endsWith('.expected.txt'))
  .map((f) => f.slice(0, -'.expected.txt'.length))
  .sort();

describe('golden error fixtures (test/fixtures/configs/*.expected.txt)', () => {
  it('covers every case the brief asks for', () => {
    expect(goldenCases).toEqual(
      expect.arrayContaining([
        'unknown-key-top',
        'unknown-key-nested',
        'wrong-types',
        'missing-required',
        'bad-enum',
        'missing-env',
        'both-password-sources',
        'starttls-ldaps',
        'name-external-and-internal',
        'missing-cert',
        'yaml-syntax',
        'several-problems',
        'missing-users-file',
      ]),
    );
  });

  for (const name of goldenCases) {
    it(name, () => {
      const expected = readFileSync(fixture(`${name}.expected.txt`), 'utf8').trimEnd();
      const actual = errorText(fixture(`${name}.yaml`), ENV);
      if (ANY_ORDER.has(name)) expect(actual.split('\n').sort()).toEqual(expected.split('\n').sort());
      else expect(actual).toBe(expected);
    });
  }
});

describe('problems are located by file, key and line', () => {
  it('directory.urll: an unknown nested key is named with its own line', () => {
    try {
      loadConfig(fixture('unknown-key-nested.yaml'), ENV);
      expect.unreachable('loaded');
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).problems).toContainEqual({
        file: fixture('unknown-key-nested.yaml'),
        key: 'directory.urll',
        line: 6,
        message: 'unknown key',
      });
    }
  });

  it('a missing config file is a ConfigError naming it', () => {
    expect(errorText(fixture('no-such-file.yaml'), ENV)).toBe('<dir>/no-such-file.yaml: cannot read: ENOENT');
  });

  it('a relative path is resolved against the working directory and reported absolute', () => {
    const rel = join('test/fixtures/configs', 'missing-env.yaml');
    const text = errorText(rel, ENV, resolve('test/fixtures/configs'));
    expect(text).toBe(readFileSync(fixture('missing-env.expected.txt'), 'utf8').trimEnd());
  });
});

describe('a valid minimal ldap config', () => {
  const config = loadConfig(fixture('valid-minimal.yaml'), ENV);

  it('takes every default', () => {
    expect(config.listen).toEqual({ host: '0.0.0.0', port: 443 });
    expect(config.log).toEqual({ level: 'info', access: 'stdout' });
    expect(config.cache).toEqual({
      max: 10000,
      authTtlSeconds: 300,
      groupTtlSeconds: 60,
      negativeTtlSeconds: 30,
      staleIfErrorSeconds: 0,
    });
    expect(config.lockout).toEqual({
      threshold: 5,
      windowSeconds: 1800,
      sourceAccounts: 10,
      sourceFailures: 50,
      familiarSeconds: 1209600,
      max: 100000,
      maxWaiting: 32,
      waitMs: 10000,
    });
    expect(config.services.activesync).toEqual({
      auth: 'basic',
      maxBodyBytes: 10485760,
      idleTimeoutSeconds: 3660,
      maxTunnelsPerSource: 16,
    });
    expect(config.services.ews.maxBodyBytes).toBe(67108864);
    expect(config.services.owa.maxBodyBytes).toBe(35_000_000);
    expect(config.tls).toMatchObject({ selfSigned: false, minVersion: 'TLSv1.2' });
    expect(config.names.noSni).toBe('external');
    expect(config.names.internalList).toEqual([]);
    expect(config.admin).toBeUndefined();
    expect(config.mailboxFlags).toBeUndefined();
  });

  it('resolves paths against the config file and the upstream name from its URL', () => {
    expect(config.file).toBe(fixture('valid-minimal.yaml'));
    expect(config.tls.cert).toBe(join(FIXTURES, 'support/gateway.crt'));
    expect(config.tls.key).toBe(join(FIXTURES, 'support/gateway.key'));
    expect(config.policyFile).toBe(join(FIXTURES, 'support/policy.yaml'));
    expect(config.upstream).toMatchObject({
      origin: 'https://exchange.lab.test',
      servername: 'exchange.lab.test',
      insecureSkipVerify: false,
      ca: undefined,
    });
    expect(config.directory).toMatchObject({
      type: 'ldap',
      urls: ['ldaps://dc1.lab.test:636'],
      startTls: false,
      baseDn: 'DC=lab,DC=test',
      netbiosDomain: 'LAB',
      upnSuffixes: [],
    });
  });

  it('is frozen, deeply', () => {
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.cache)).toBe(true);
    expect(Object.isFrozen(config.services.ews)).toBe(true);
    expect(Object.isFrozen(config.names.externalList)).toBe(true);
  });

  it('reads the bind password from the environment given, not process.env', () => {
    const d = config.directory;
    expect(d.type === 'ldap' && d.bindPassword.reveal()).toBe(ENV_PASSWORD);
    expect(errorText(fixture('valid-minimal.yaml'), {})).toContain(
      'environment variable EXGATE_BIND_PASSWORD is not set',
    );
    expect(errorText(fixture('valid-minimal.yaml'), { EXGATE_BIND_PASSWORD: '' })).toContain(
      'EXGATE_BIND_PASSWORD is not set',
    );
  });
});

describe('a valid config with bindPasswordFile, StartTLS and CA files', () => {
  it('loads the password without its trailing newline, and the PEMs', () => {
    const config = loadConfig(fixture('valid-password-file.yaml'), {});
    const d = config.directory;
    expect(d.type).toBe('ldap');
    if (d.type !== 'ldap') return;
    expect(d.bindPassword.reveal()).toBe(FILE_PASSWORD);
    expect(d.urls).toEqual(['ldap://dc1.lab.test', 'ldap://dc2.lab.test:389']);
    expect(d.startTls).toBe(true);
    expect(d.upnSuffixes).toEqual(['lab.test']);
    expect(d.ca).toContain('-----BEGIN CERTIFICATE-----');
    expect(config.upstream.ca).toContain('-----BEGIN CERTIFICATE-----');
  });

  it('watches every file it read: policy, certificate, key, both CAs and the password file', () => {
    const config = loadConfig(fixture('valid-password-file.yaml'), {});
    const names = config.watched.map((f) => f.slice(f.lastIndexOf('/') + 1));
    expect(config.watched.every((f) => f.startsWith('/'))).toBe(true);
    expect(names.sort()).toEqual([
      'bind-password.txt',
      'ca.pem',
      'ca.pem',
      'gateway.crt',
      'gateway.key',
      'policy.yaml',
    ]);
    for (const f of config.watched) expect(() => readFileSync(f)).not.toThrow();
  });
});

describe('plaintext to a host that is not loopback', () => {
  it('loads only when allowPlaintext says so (lab only)', () => {
    const config = loadConfig(fixture('valid-plaintext-allowed.yaml'), {});
    expect(config.upstream.allowPlaintext).toBe(true);
    expect(config.directory.type).toBe('ldap');
  });
});

describe('a valid lab config: self-signed TLS, file directory, overrides', () => {
  const config = loadConfig(fixture('valid-self-signed.yaml'), {});

  it('does not need the cert and key files when selfSigned is true', () => {
    expect(config.tls).toMatchObject({ selfSigned: true, cert: join(FIXTURES, 'support/generated/missing.crt') });
  });

  it("derives the file directory's baseDn from the first UPN suffix", () => {
    expect(config.directory).toEqual({
      type: 'file',
      path: join(FIXTURES, 'support/users.yaml'),
      baseDn: 'DC=lab,DC=test',
      netbiosDomain: 'LAB',
      upnSuffixes: ['lab.test', 'mail.lab.test'],
    });
    const bare = loadConfig(fixture('valid-file-directory-no-suffix.yaml'), {});
    expect(bare.directory).toMatchObject({ type: 'file', baseDn: 'DC=exgate,DC=local', upnSuffixes: [] });
  });

  it('keeps what it was given and defaults the rest, key by key', () => {
    expect(config.names).toMatchObject({ noSni: 'reject', externalList: ['outlook-ext.lab.test', '127.0.0.1'] });
    expect(config.upstream).toMatchObject({
      origin: 'http://127.0.0.1:8444',
      servername: 'exchange.lab.test',
      insecureSkipVerify: true,
    });
    expect(config.log).toEqual({ level: 'debug', access: join(FIXTURES, 'logs/access.log') });
    expect(config.services.ews).toEqual({
      auth: 'basic',
      maxBodyBytes: 0,
      idleTimeoutSeconds: 2100,
      maxTunnelsPerSource: 16,
    });
    expect(config.services.activesync).toEqual({
      auth: 'basic',
      maxBodyBytes: 10485760,
      idleTimeoutSeconds: 600,
      maxTunnelsPerSource: 16,
    });
  });
});

describe('the INTERFACE.md example config, verbatim', () => {
  // test/fixtures/configs/interface-example.yaml is the YAML block of INTERFACE.md "Gateway
  // configuration" as is. It is copied to <tmp>/config/gateway.yaml and the files it names are
  // created around it, mirroring its relative paths.
  const tmp = mkdtempSync(join(tmpdir(), 'exgate-config-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  const pem = readFileSync(fixture('support/ca.pem'), 'utf8');
  mkdirSync(join(tmp, 'config'));
  mkdirSync(join(tmp, 'certs'));
  copyFileSync(fixture('interface-example.yaml'), join(tmp, 'config/gateway.yaml'));
  for (const f of ['gateway.crt', 'gateway.key', 'exchange-ca.pem', 'ad-ca.pem'])
    writeFileSync(join(tmp, 'certs', f), pem);
  writeFileSync(join(tmp, 'config/policy.yaml'), 'rules: []\n');
  const file = join(tmp, 'config/gateway.yaml');

  it('loads when the files exist and EXGATE_BIND_PASSWORD is set', () => {
    const config = loadConfig(file, ENV);
    expect(config.listen).toEqual({ host: '0.0.0.0', port: 443 });
    expect(config.tls).toMatchObject({
      cert: join(tmp, 'certs/gateway.crt'),
      key: join(tmp, 'certs/gateway.key'),
      selfSigned: false,
    });
    expect(config.names.externalList).toEqual(['outlook-ext.lab.test', 'autodiscover.lab.test']);
    expect(config.names.internalList).toEqual(['outlook.lab.test']);
    expect(config.names.noSni).toBe('external');
    expect(config.upstream).toMatchObject({
      origin: 'https://exchange.lab.test',
      servername: 'exchange.lab.test',
      insecureSkipVerify: false,
      ca: pem,
    });
    expect(config.directory).toMatchObject({
      type: 'ldap',
      urls: ['ldaps://dc1.lab.test:636'],
      ca: pem,
      startTls: false,
      bindDn: 'CN=svc-exgate,CN=Users,DC=lab,DC=test',
      baseDn: 'DC=lab,DC=test',
      netbiosDomain: 'LAB',
      upnSuffixes: ['lab.test'],
    });
    expect(config.policyFile).toBe(join(tmp, 'config/policy.yaml'));
    expect(config.log).toEqual({ level: 'info', access: 'stdout' });
    expect(config.cache).toEqual({
      max: 10000,
      authTtlSeconds: 300,
      groupTtlSeconds: 60,
      negativeTtlSeconds: 30,
      staleIfErrorSeconds: 0,
    });
    expect(config.lockout).toEqual({
      threshold: 5,
      windowSeconds: 1800,
      sourceAccounts: 10,
      sourceFailures: 50,
      familiarSeconds: 1209600,
      max: 100000,
      maxWaiting: 32,
      waitMs: 10000,
    });
    expect(config.services.mapi.auth).toBe('basic+ntlm');
    expect(config.services.activesync).toEqual({
      auth: 'basic',
      maxBodyBytes: 10485760,
      idleTimeoutSeconds: 3660,
      maxTunnelsPerSource: 16,
    });
    expect(config.admin).toEqual({ host: '127.0.0.1', port: 9090 });
    expect(config.mailboxFlags).toEqual({
      runner: ['pwsh', '-NoProfile', '-File', join(tmp, 'scripts/exchange-session.ps1')],
      maxBlockShare: 0.1,
      intervalMinutes: 0,
      flags: {
        MAPIBlockOutlookRpcHttp: { service: 'mapi', allowedValue: false },
        MAPIBlockOutlookExternalConnectivity: { service: 'mapi', allowedValue: false },
      },
      batchSize: 50,
      runnerTimeoutSeconds: 600,
    });
  });

  it('does not load without EXGATE_BIND_PASSWORD', () => {
    expect(errorText(file, {}, join(tmp, 'config'))).toBe(
      '<dir>/gateway.yaml:25: directory.bindPasswordEnv: environment variable EXGATE_BIND_PASSWORD is not set',
    );
  });

  it('names every missing file at once', () => {
    const bare = mkdtempSync(join(tmpdir(), 'exgate-config-bare-'));
    try {
      copyFileSync(fixture('interface-example.yaml'), join(bare, 'gateway.yaml'));
      const text = errorText(join(bare, 'gateway.yaml'), ENV, bare)
        .split(dirname(bare) + '/')
        .join('<parent>/');
      expect(text.split('\n').map((l) => l.replace(/^<dir>\/gateway\.yaml:\d+: /, ''))).toEqual([
        'tls.cert: file not found: <parent>/certs/gateway.crt',
        'tls.key: file not found: <parent>/certs/gateway.key',
        'upstream.ca: cannot read <parent>/certs/exchange-ca.pem: ENOENT',
        'directory.ca: cannot read <parent>/certs/ad-ca.pem: ENOENT',
        'policyFile: file not found: <dir>/policy.yaml',
      ]);
    } finally {
      rmSync(bare, { recursive: true, force: true });
    }
  });
});

describe('the bind password never prints', () => {
  const configs: [what: string, load: () => Config, secret: string][] = [
    ['bindPasswordEnv', () => loadConfig(fixture('valid-minimal.yaml'), ENV), ENV_PASSWORD],
    ['bindPasswordFile', () => loadConfig(fixture('valid-password-file.yaml'), {}), FILE_PASSWORD],
  ];
  it.each(configs)('%s', (_what, load, secret) => {
    const config = load();
    const d = config.directory;
    expect(d.type === 'ldap' && d.bindPassword.reveal()).toBe(secret); // the check below is not vacuous
    expect(JSON.stringify(config)).not.toContain(secret);
    expect(JSON.stringify(config)).toContain('"bindPassword":"[redacted]"');
    expect(inspect(config, { depth: 10 })).not.toContain(secret);
    expect(inspect(config, { depth: Infinity, showHidden: true })).not.toContain(secret);
    if (d.type !== 'ldap') return;
    expect(String(d.bindPassword)).toBe('[redacted]');
    expect(`${d.bindPassword}`).toBe('[redacted]');
    expect(inspect(d.bindPassword)).toBe('[redacted]');
    expect(Object.keys(d.bindPassword)).toEqual([]);
  });

  it('nor does a ConfigError about it', () => {
    const text = errorText(fixture('both-password-sources.yaml'), ENV);
    expect(text).not.toContain(ENV_PASSWORD);
    expect(text).not.toContain(FILE_PASSWORD);
  });

  it('nor a password pasted where a variable name or a DC URL belongs', () => {
    const dir = mkdtempSync(join(tmpdir(), 'exgate-config-'));
    try {
      const minimal = readFileSync(fixture('valid-minimal.yaml'), 'utf8').replace(/support\//g, `${FIXTURES}/support/`);
      const pasted = join(dir, 'pasted.yaml');
      writeFileSync(pasted, minimal.replace('bindPasswordEnv: EXGATE_BIND_PASSWORD', "bindPasswordEnv: 'Pa55w0rd!x'"));
      const text = errorText(pasted, ENV, dir);
      expect(text).toContain('directory.bindPasswordEnv');
      expect(text).not.toContain('Pa55w0rd!x');
      const inUrl = join(dir, 'in-url.yaml');
      writeFileSync(inUrl, minimal.replace('ldaps://dc1.lab.test:636', 'ldaps://svc:Pa55w0rd!x@dc1.lab.test:636'));
      const urlText = errorText(inUrl, ENV, dir);
      expect(urlText).toContain('directory.url');
      expect(urlText).not.toContain('Pa55w0rd!x');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('fixtures', () => {
  it('every fixture a config names exists (so a golden error is the one meant)', () => {
    for (const f of ['gateway.crt', 'gateway.key', 'ca.pem', 'not-pem.txt', 'bind-password.txt', 'policy.yaml']) {
      expect(existsSync(join(FIXTURES, 'support', f)), f).toBe(true);
    }
  });
});

// `exgate check` (src/commands/check.ts) prints every problem in one run: each
// test/fixtures/configs/check/<case>.yaml must give exactly <case>.check.txt, test/fixtures written as
// `<dir>`. The policy half of these cases is test/fixtures/policies/schema-and-structure.yaml.
import { check, findProblems } from '../../src/commands/check.js';
import { formatProblem } from '../../src/errors.js';

describe('exgate check: every problem in one run', () => {
  // No Exchange in unit tests (the fixtures name exchange.lab.test); --as-user: this process's own user.
  const OFFLINE = { offline: true, asUser: userInfo().username };
  const CHECK = join(FIXTURES, 'check');
  const ROOT = resolve(FIXTURES, '..');
  const checkText = async (name: string) =>
    (await findProblems(join(CHECK, `${name}.yaml`), OFFLINE))
      .map(formatProblem)
      .join('\n')
      .split(ROOT + '/')
      .join('<dir>/');
  const runCheck = async (name: string) => {
    let out = '';
    const sink = {
      write: (chunk: string) => {
        out += chunk;
        return true;
      },
    } as NodeJS.WritableStream;
    const code = await check(join(CHECK, `${name}.yaml`), sink, OFFLINE);
    return { code, out };
  };
  const checkCases = readdirSync(CHECK)
    .filter((f) => f.endsWith('.check.txt'))
    .map((f) => f.slice(0, -'.check.txt'.length))
    .sort();

  it('covers a broken config, a broken directory and a broken policy', () => {
    expect(checkCases).toEqual(['bad-policy', 'broken-config', 'broken-config-missing-policy', 'broken-directory']);
  });

  it.each(checkCases)('%s', async (name) => {
    expect(await checkText(name)).toBe(readFileSync(join(CHECK, `${name}.check.txt`), 'utf8').trimEnd());
  });

  it('a broken config still gets its policy checked, all but the names, and says so in one line', async () => {
    const lines = (await checkText('broken-config')).split('\n');
    expect(lines).toContain('<dir>/configs/check/broken-config.yaml:3: tls: is required');
    expect(lines).toContain('<dir>/policies/schema-and-structure.yaml:7: rules[1].id: duplicate rule id outlook');
    expect(lines).toContain(
      '<dir>/policies/schema-and-structure.yaml:10: rules[2]: a rule has exactly one of allow and deny',
    );
    expect(lines.filter((l) => l.includes('not resolved against the directory'))).toHaveLength(1);
    expect(lines.some((l) => l.includes('not found in the directory'))).toBe(false);
  });

  it('a schema error in the policy hides neither its structure nor its unknown names', async () => {
    const lines = (await checkText('bad-policy')).split('\n');
    expect(lines).toContain(
      '<dir>/policies/schema-and-structure.yaml:2: mode: must be one of "enforce", "report-only"',
    );
    expect(lines).toContain('<dir>/policies/schema-and-structure.yaml:7: rules[1].id: duplicate rule id outlook');
    expect(lines).toContain(
      '<dir>/policies/schema-and-structure.yaml:6: rules[0].allow.groups[0]: group AllowExternalAcess not found in the directory',
    );
    expect(lines.some((l) => l.includes('not resolved'))).toBe(false);
  });

  it('a config whose policyFile is missing names it once', async () => {
    const text = await checkText('broken-config-missing-policy');
    expect(text.match(/no-such-policy\.yaml/g)).toHaveLength(1);
  });

  it('a good config and policy give no problem, and check prints ok with exit 0', async () => {
    expect(await findProblems(join(CHECK, 'valid.yaml'), OFFLINE)).toEqual([]);
    const { code, out } = await runCheck('valid');
    expect(code).toBe(0);
    expect(out).toMatch(/^config: ok\n(.*\n)*upstream: skipped \(--offline\)\n(.*\n)*ok\n$/);
    expect(existsSync(join(CHECK, 'generated'))).toBe(false); // check never generates the selfSigned pair
  });

  it('exits 1 with one line per problem', async () => {
    const { code, out } = await runCheck('broken-config');
    expect(code).toBe(1);
    const lines = out.trimEnd().split('\n');
    expect(lines.filter((l) => l.startsWith('<') || l.startsWith('/'))).toHaveLength(8);
    expect(lines.slice(8)).toEqual([
      'config: 2 problems',
      'policy: 5 problems',
      'certificate: skipped (the config has errors)',
      'directory: skipped (the config has errors)',
      'groups: skipped (the config has errors)',
      'upstream: skipped (the config has errors)',
      'log: skipped (the config has errors)',
      'permissions: skipped (the config has errors)',
      '8 problems',
    ]);
  });
});

describe('state.redis (several gateways)', () => {
  it('loads a TLS Redis with its CA, password and prefix; the password stays a Secret', () => {
    const config = loadConfig(fixture('valid-redis.yaml'), ENV);
    expect(config.state.instances).toBe(2);
    expect(config.state.redis).toMatchObject({ url: 'rediss://redis.lab.test:6380', tls: true, keyPrefix: 'gw-eu:' });
    expect(config.state.redis?.ca).toContain('-----BEGIN');
    expect(config.state.redis?.password?.reveal()).toBe(ENV_PASSWORD);
    expect(inspect(config)).not.toContain(ENV_PASSWORD);
    expect(JSON.stringify(config)).not.toContain(ENV_PASSWORD);
  });

  it('is absent by default: each gateway alone, one instance', () => {
    const config = loadConfig(fixture('valid-minimal.yaml'), ENV);
    expect(config.state).toEqual({ redis: null, instances: 1 });
  });

  it('takes redis:// on loopback without allowPlaintext', () => {
    const dir = mkdtempSync(join(tmpdir(), 'exgate-state-'));
    try {
      const text = readFileSync(fixture('valid-minimal.yaml'), 'utf8').replaceAll('support/', `${FIXTURES}/support/`);
      writeFileSync(join(dir, 'g.yaml'), `${text}state: { redis: { url: "redis://127.0.0.1:6379" } }\n`);
      expect(loadConfig(join(dir, 'g.yaml'), ENV).state.redis).toMatchObject({ tls: false, password: null });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
