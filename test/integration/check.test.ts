/**
 * `exgate check` catches what breaks on day one, against the real DC and the Exchange stand-in:
 * Exchange's trust and name, baseDn, the NetBIOS name and UPN suffixes AD knows, the service user's
 * file access, an incomplete certificate chain, and one summary line per area. Also the running
 * gateway: a 502's cause reaches the operational log once, not once per request.
 */
import { execFile, execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { startExchangeStandin } from '../../src/standin/exchange.js';
import { USERS } from '../helpers/ad-fixtures.js';
import { send, startHarness, type Harness } from '../helpers/gateway-harness.js';

const run = promisify(execFile);
const EXGATE = join(import.meta.dirname, '..', '..', 'bin', 'exgate.js');

async function exgate(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [EXGATE, ...args], { timeout: 30_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

type GatewayYaml = Record<string, Record<string, unknown>>;

describe('exgate check', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ directory: 'ldap' });
  });
  afterAll(async () => {
    await h?.close();
  });

  /** The harness's config, changed by `edit`, as a new file beside it; check's output for it. */
  const checkWith = async (name: string, edit: (c: GatewayYaml) => void, ...flags: string[]) => {
    const config = parse(readFileSync(h.configFile, 'utf8')) as GatewayYaml;
    edit(config);
    const file = join(h.dir, `${name}.yaml`);
    writeFileSync(file, stringify(config));
    return exgate('check', '--config', file, ...flags);
  };

  it('ends with one line per area, and ok', async () => {
    const r = await exgate('check', '--config', h.configFile, '--as-user', 'root');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      [
        'config: ok',
        'certificate: ok',
        'directory: ok (domain lab.test, NetBIOS LAB)',
        'policy: ok',
        'groups: ok',
        `upstream: ok (${h.standin.url} as exchange-be.lab.test, certificate verified, HTTP 200)`,
        'log: ok (stdout)',
        'permissions: ok (as root)',
        'ok',
        '',
      ].join('\n'),
    );
  });

  it('says what it skipped: --offline, no service user, and everything after a broken config', async () => {
    const offline = await exgate('check', '--config', h.configFile, '--offline');
    expect(offline.code, offline.stdout).toBe(0);
    expect(offline.stdout).toContain('\ndirectory: skipped (--offline)\n');
    expect(offline.stdout).toContain('\ngroups: skipped (--offline)\n');
    expect(offline.stdout).toContain('\nupstream: skipped (--offline)\n');
    // Run as root, with no exgate.service installed here to name the user.
    expect(offline.stdout).toMatch(
      /\npermissions: skipped \(no exgate\.service unit names the service user; run with --as-user USER\)\nok\n$/,
    );
    const broken = await checkWith('broken', (c) => {
      c.listen = { port: 99999 };
    });
    expect(broken.code).toBe(1);
    expect(broken.stdout).toContain('\nconfig: 1 problem\npolicy: ok\ncertificate: skipped (the config has errors)\n');
    expect(broken.stdout).toContain('\nupstream: skipped (the config has errors)\n');
    expect(broken.stdout).toContain('\nlog: skipped (the config has errors)\n');
    expect(broken.stdout).toMatch(/\n2 problems\n$/);
  });

  it('a missing upstream.ca: names upstream.ca, in words', async () => {
    const r = await checkWith('no-ca', (c) => {
      delete c.upstream!.ca;
    });
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/no-ca\.yaml:\d+: upstream\.ca: certificate not trusted — set upstream\.ca to the CA /);
    expect(r.stdout).toContain("that issued Exchange's certificate (exchange-be.lab.test)");
    expect(r.stdout).toContain('\nupstream: 1 problem\n');
  });

  it("a wrong servername: names upstream.servername and the names in Exchange's certificate", async () => {
    const r = await checkWith('wrong-name', (c) => {
      c.upstream!.servername = 'exchange.lab.test';
    });
    expect(r.code, r.stdout).toBe(1);
    expect(r.stdout).toMatch(/wrong-name\.yaml:\d+: upstream\.servername: name mismatch — .*/);
    expect(r.stdout).toContain("set upstream.servername to a name in Exchange's certificate: exchange-be.lab.test\n");
    expect(r.stdout).not.toContain('upstream.ca');
  });

  it('a baseDn that does not exist: names directory.baseDn, and skips the groups', async () => {
    const r = await checkWith('no-base', (c) => {
      c.directory!.baseDn = 'OU=Nowhere,DC=lab,DC=test';
    });
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/no-base\.yaml:\d+: directory\.baseDn: OU=Nowhere,DC=lab,DC=test does not exist /);
    expect(r.stdout).toContain('does not exist in the directory; the domain is DC=lab,DC=test\n');
    expect(r.stdout).toContain('\ngroups: skipped (directory.baseDn does not exist)\n');
    expect(r.stdout).not.toContain('not found in the directory');
  });

  it('a wrong netbiosDomain: names directory.netbiosDomain and what AD says (LAB)', async () => {
    const r = await checkWith('netbios', (c) => {
      c.directory!.netbiosDomain = 'LABS';
    });
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(
      /netbios\.yaml:\d+: directory\.netbiosDomain: LABS is not the domain's NetBIOS name: AD says LAB /,
    );
  });

  it('a UPN suffix AD does not know: names it', async () => {
    const r = await checkWith('upn', (c) => {
      c.directory!.upnSuffixes = ['LAB.test', 'corp.example'];
    });
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(
      /upn\.yaml:\d+: directory\.upnSuffixes\[1\]: corp\.example is not a UPN suffix AD knows; AD knows: lab\.test/,
    );
    expect(r.stdout).not.toContain('upnSuffixes[0]');
    expect(r.stdout).toContain('\ndirectory: 1 problem\n');
  });

  it('--as-user: a key only root can read names tls.key; a log folder it cannot write names log.access', async () => {
    chmodSync(h.dir, 0o755); // mkdtemp made it 0700
    chmodSync(join(h.dir, 'bind-password'), 0o644);
    mkdirSync(join(h.dir, 'logs'), { mode: 0o755 });
    try {
      const logToFile = (c: GatewayYaml) => {
        c.log = { access: 'logs/access.log' };
      };
      const r = await checkWith('as-user', logToFile, '--as-user', 'nobody');
      expect(r.code).toBe(1);
      const problems = r.stdout.split('\n').filter((l) => l.startsWith('/'));
      expect(problems).toEqual([
        expect.stringMatching(
          /as-user\.yaml:\d+: tls\.key: user nobody cannot read .*\/gateway\.key \(mode 0600, owner root:root\)$/,
        ),
        expect.stringMatching(
          /as-user\.yaml:\d+: log\.access: user nobody cannot create files in .*\/logs to write .*\/access\.log/,
        ),
      ]);
      expect(r.stdout).toContain('\npermissions: 2 problems\n');
      chownSync(join(h.dir, 'gateway.key'), 65534, 65534);
      chownSync(join(h.dir, 'logs'), 65534, 65534);
      const fixed = await checkWith('as-user', logToFile, '--as-user', 'nobody');
      expect(fixed.stdout).toContain('\npermissions: ok (as nobody)\n');
      expect(fixed.code).toBe(0);
    } finally {
      chownSync(join(h.dir, 'gateway.key'), 0, 0);
      chmodSync(join(h.dir, 'bind-password'), 0o600);
    }
  });

  it('a certificate chain without its intermediate: a warning, not a failure', async () => {
    makeChain(h.dir);
    const cert = (file: string) => (c: GatewayYaml) => {
      c.tls = { cert: file, key: 'leaf.key', selfSigned: false };
    };
    const without = await checkWith('leaf-only', cert('leaf.crt'), '--offline');
    expect(without.code, without.stdout).toBe(0);
    const out = without.stdout;
    expect(out).toMatch(/leaf-only\.yaml:\d+: tls\.cert: warning: the chain has no intermediate: .*leaf\.crt /);
    expect(out).toContain("of mail.lab.test issued by Test Issuing CA, but not Test Issuing CA's certificate");
    expect(without.stdout).toContain('\ncertificate: ok, 1 warning\n');
    const full = await checkWith('full-chain', cert('chain.crt'), '--offline');
    expect(full.stdout).not.toContain('warning');
    expect(full.stdout).toContain('\ncertificate: ok\n');
  });
});

/** A root CA, an issuing CA, a leaf for the harness's names: leaf.crt alone, chain.crt with its issuer. */
function makeChain(dir: string): void {
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  for (const k of ['root', 'int', 'leaf']) {
    ssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', `${k}.key`);
  }
  writeFileSync(
    join(dir, 'ca.ext'),
    'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n' +
      'subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n',
  );
  writeFileSync(
    join(dir, 'leaf.ext'),
    'subjectAltName=DNS:mail.lab.test,DNS:autodiscover.lab.test\nauthorityKeyIdentifier=keyid\n',
  );
  const sign = (csr: string, ca: string, ext: string, out: string) =>
    ssl(
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      `${ca}.crt`,
      '-CAkey',
      `${ca}.key`,
      '-set_serial',
      String(Date.now()),
      '-days',
      '2',
      '-extfile',
      ext,
      '-out',
      out,
    );
  ssl('req', '-x509', '-new', '-key', 'root.key', '-subj', '/CN=Test Root CA', '-days', '2', '-out', 'root.crt');
  ssl('req', '-new', '-key', 'int.key', '-subj', '/CN=Test Issuing CA', '-out', 'int.csr');
  sign('int.csr', 'root', 'ca.ext', 'int.crt');
  ssl('req', '-new', '-key', 'leaf.key', '-subj', '/CN=mail.lab.test', '-out', 'leaf.csr');
  sign('leaf.csr', 'int', 'leaf.ext', 'leaf.crt');
  const pem = (f: string) => readFileSync(join(dir, f), 'utf8');
  writeFileSync(join(dir, 'chain.crt'), pem('leaf.crt') + pem('int.crt'));
}

describe('the running gateway, when Exchange cannot be reached', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ directory: 'ldap' });
  });
  afterAll(async () => {
    await h?.close();
  });

  const warnings = () =>
    h
      .allLogText()
      .split('\n')
      .filter((l) => l.includes('cannot reach Exchange'))
      .map((l) => JSON.parse(l) as { cause: string });
  const setServername = async (name: string) => {
    writeFileSync(h.configFile, readFileSync(h.configFile, 'utf8').replace(/servername: .*/, `servername: ${name}`));
    expect(await h.running.reload()).toBe(true);
  };
  const owa = async () => (await send(h, '/owa/', { user: 'alice', password: USERS.alice.password })).status;

  it('logs the cause of the 502s once, not once per request', async () => {
    await setServername('exchange.lab.test');
    try {
      expect([await owa(), await owa(), await owa()]).toEqual([502, 502, 502]);
      expect(warnings()).toHaveLength(1);
      expect(warnings()[0]?.cause).toMatch(/ERR_TLS_CERT_ALTNAME_INVALID/);
      const failed = h.access.filter((r) => r.status === 502);
      expect(failed.every((r) => r.detail?.includes('ERR_TLS_CERT_ALTNAME_INVALID'))).toBe(true);
    } finally {
      await setServername('exchange-be.lab.test');
    }
  });

  it('logs a cause again once Exchange answered in between', async () => {
    const refused = () => warnings().filter((w) => w.cause.includes('ECONNREFUSED')).length;
    const tls = { cert: readFileSync(join(h.dir, 'upstream.crt')), key: readFileSync(join(h.dir, 'upstream.key')) };
    expect(await owa()).toBe(200);
    await h.standin.close();
    expect([await owa(), await owa()]).toEqual([502, 502]);
    expect(refused()).toBe(1);
    const again = await startExchangeStandin({ tls, port: h.standin.port });
    try {
      expect(await owa()).toBe(200);
    } finally {
      await again.close();
    }
    expect([await owa(), await owa()]).toEqual([502, 502]);
    expect(refused()).toBe(2);
  });
});
