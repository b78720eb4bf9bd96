/**
 * Faults that will not fix themselves end `exgate serve` at once, with one `exgate:` line naming
 * file and key (issue 10): a service account the DC refuses (never retried: AD counts each try),
 * a port in use, an access log that cannot be opened. A log that fails later never stops it.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { request } from 'undici';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createUser, deleteUser, readAttributes, type NewUser } from '../helpers/ad-admin.js';
import { freePort, send, startHarness, type Harness } from '../helpers/gateway-harness.js';

const EXGATE = join(import.meta.dirname, '..', '..', 'bin', 'exgate.js');
const ldapUrl = inject('ldapUrl');

interface Proc {
  readonly stdout: () => string;
  readonly stderr: () => string;
  /** The exit code, or 'running' if it has not exited within `ms`. */
  exited(ms: number): Promise<number | 'running'>;
  kill(): void;
}

function serve(config: string, ...args: string[]): Proc {
  const child = spawn(process.execPath, [EXGATE, ...(args.length ? args : ['serve']), '--config', config], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const exit = new Promise<number>((r) => child.once('exit', (code, signal) => r(code ?? (signal ? 128 : -1))));
  return {
    stdout: () => out,
    stderr: () => err,
    exited: (ms) => Promise.race([exit, new Promise<'running'>((r) => setTimeout(() => r('running'), ms))]),
    kill: () => {
      child.kill('SIGKILL');
    },
  };
}

/** The lines a fatal start prints for people (the operational log's JSON lines aside). */
function fatalLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.startsWith('exgate:'));
}

/** Writes a variant of the harness config (served as a process) and returns its path. */
function variant(h: Harness, name: string, change: (c: Record<string, any>) => void): string {
  const config = parse(readFileSync(h.configFile, 'utf8')) as Record<string, any>;
  change(config);
  const file = join(h.dir, name);
  writeFileSync(file, stringify(config));
  return file;
}

async function until(check: () => boolean, ms: number, context: () => string): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out; output so far:\n${context()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('a service account the DC refuses', () => {
  let h: Harness;
  let svc: NewUser;
  beforeAll(async () => {
    h = await startHarness({ directory: 'ldap' });
    await h.running.close(); // keep the files; serve runs as a process
    // Its own account, so that the shared service account's badPwdCount is never touched.
    svc = await createUser(ldapUrl, `svcff${randomBytes(3).toString('hex')}`, 'Svc-Fail-Fast-1!');
    writeFileSync(join(h.dir, 'wrong-password'), 'Not-The-Password-9\n');
  });
  afterAll(async () => {
    await deleteUser(ldapUrl, svc.dn);
    await h?.standin.close();
    if (h) rmSync(h.dir, { recursive: true, force: true });
  });

  const badPwdCount = async () => Number((await readAttributes(ldapUrl, svc.dn, ['badPwdCount'])).badPwdCount || 0);
  const wrong = () =>
    variant(h, 'wrong-password.yaml', (c) => {
      c.directory.bindDn = svc.dn;
      c.directory.bindPasswordFile = 'wrong-password';
    });

  it('serve exits at once with one line naming the key and "invalid credentials", and binds once', async () => {
    const before = await badPwdCount();
    const p = serve(wrong());
    try {
      const code = await p.exited(10_000);
      expect(code, p.stderr()).not.toBe('running');
      expect(code).toBe(78); // EX_CONFIG: the unit does not restart it
      const lines = fatalLines(p.stderr());
      expect(lines, p.stderr()).toHaveLength(1);
      expect(lines[0]).toMatch(
        /wrong-password\.yaml: directory\.bindPasswordFile: .*invalid credentials.*\(AD data 52e\)/,
      );
      expect(p.stderr()).not.toContain('retrying');
      expect(p.stderr() + p.stdout()).not.toContain('Not-The-Password-9');
      expect(await badPwdCount()).toBeLessThanOrEqual(before + 1); // never retried
    } finally {
      p.kill();
    }
  });

  it("with workers, the first worker's refusal ends the start: one bind, exit 78, no worker restarted", async () => {
    const before = await badPwdCount();
    const p = serve(
      variant(h, 'wrong-password-workers.yaml', (c) => {
        c.directory.bindDn = svc.dn;
        c.directory.bindPasswordFile = 'wrong-password';
        c.workers = 4;
      }),
    );
    try {
      const code = await p.exited(15_000);
      expect(code, p.stderr()).toBe(78);
      expect(fatalLines(p.stderr()), p.stderr()).toHaveLength(1);
      expect(await badPwdCount()).toBeLessThanOrEqual(before + 1); // four workers would have bound four times
    } finally {
      p.kill();
    }
  });

  it('check says the same, in words, and does not call the directory unreachable', async () => {
    const before = await badPwdCount();
    const p = serve(wrong(), 'check');
    expect(await p.exited(15_000)).toBe(1);
    expect(p.stdout()).toMatch(
      /wrong-password\.yaml: directory\.bindPasswordFile: .*invalid credentials.*\(AD data 52e\)/,
    );
    expect(p.stdout()).not.toContain('unreachable');
    expect(await badPwdCount()).toBeLessThanOrEqual(before + 1);
  });
});

describe('a port that cannot be bound', () => {
  let h: Harness;
  let holder: Server;
  let port: number;
  beforeAll(async () => {
    h = await startHarness({ directory: 'ldap' });
    await h.running.close();
    port = await freePort();
    holder = createServer();
    await new Promise<void>((r) => holder.listen(port, '127.0.0.1', r));
  });
  afterAll(async () => {
    holder?.close();
    await h?.standin.close();
    if (h) rmSync(h.dir, { recursive: true, force: true });
  });

  it('ends serve at once with one line (the address is in use, listen.port), holding no LDAP connection', async () => {
    const p = serve(
      variant(h, 'port-in-use.yaml', (c) => {
        c.listen.port = port;
      }),
    );
    try {
      const code = await p.exited(10_000);
      expect(code, p.stderr()).not.toBe('running');
      expect(code).not.toBe(0);
      const lines = fatalLines(p.stderr());
      expect(lines, p.stderr()).toHaveLength(1);
      expect(lines[0]).toMatch(
        new RegExp(
          `port-in-use\\.yaml: listen\\.port: cannot listen on 127\\.0\\.0\\.1:${port}: the address is already in use.*EADDRINUSE`,
        ),
      );
    } finally {
      p.kill();
    }
  });
});

describe('a port that cannot be bound, with workers', () => {
  let h: Harness;
  let holder: Server;
  let port: number;
  beforeAll(async () => {
    h = await startHarness({ directory: 'file' });
    await h.running.close();
    port = await freePort();
    holder = createServer();
    await new Promise<void>((r) => holder.listen(port, '127.0.0.1', r));
  });
  afterAll(async () => {
    holder?.close();
    await h?.standin.close();
    if (h) rmSync(h.dir, { recursive: true, force: true });
  });

  it("exits non-zero with the first worker's one line, never 0 (systemd would call that a clean stop)", async () => {
    const p = serve(
      variant(h, 'port-in-use-workers.yaml', (c) => {
        c.listen.port = port;
        c.workers = 2;
      }),
    );
    try {
      const code = await p.exited(10_000);
      expect(code, p.stderr()).not.toBe('running');
      expect(code).toBe(1);
      expect(fatalLines(p.stderr()), p.stderr()).toHaveLength(1);
    } finally {
      p.kill();
    }
  });
});

describe('an access log that cannot be written', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ directory: 'file' });
    await h.running.close();
    writeFileSync(join(h.dir, 'a-file'), '');
  });
  afterAll(async () => {
    await h?.standin.close();
    if (h) rmSync(h.dir, { recursive: true, force: true });
  });

  it('serve refuses to start on a path it cannot open, naming log.access; check says so too', async () => {
    // Tests run as root, which may write anywhere: a parent that is a regular file stops root too.
    const file = variant(h, 'bad-log.yaml', (c) => {
      c.log.access = 'a-file/access.log';
    });
    const p = serve(file);
    try {
      const code = await p.exited(10_000);
      expect(code, p.stderr()).not.toBe('running');
      expect(code).not.toBe(0);
      expect(fatalLines(p.stderr())).toEqual([
        expect.stringMatching(/bad-log\.yaml: log\.access: cannot open .*a-file\/access\.log: .*ENOTDIR/),
      ]);
      expect(p.stderr()).not.toMatch(/^\s+at /m); // no stack
    } finally {
      p.kill();
    }
    const c = serve(file, 'check');
    expect(await c.exited(15_000)).toBe(1);
    expect(c.stdout()).toMatch(/bad-log\.yaml(:\d+)?: log\.access: cannot open .*ENOTDIR/);
  });

  it('a log folder that does not exist (even under /proc, where mkdir never returns) is refused at once', async () => {
    const file = variant(h, 'proc-log.yaml', (c) => {
      c.log.access = '/proc/nope/access.log';
    });
    const p = serve(file);
    try {
      const code = await p.exited(10_000);
      expect(code, p.stderr()).not.toBe('running');
      expect(code).not.toBe(0);
      expect(fatalLines(p.stderr())).toEqual([
        expect.stringMatching(/proc-log\.yaml: log\.access: cannot open \/proc\/nope\/access\.log/),
      ]);
    } finally {
      p.kill();
    }
    const c = serve(file, 'check');
    expect(await c.exited(15_000)).toBe(1);
    expect(c.stdout()).toMatch(
      /log\.access: cannot open \/proc\/nope\/access\.log: the folder \/proc\/nope does not exist/,
    );
  });

  it('a write that fails at runtime (/dev/full) is logged and counted; records go to stderr; the gateway keeps answering', async () => {
    const port = await freePort();
    const adminPort = await freePort();
    const file = variant(h, 'full-log.yaml', (c) => {
      c.log.access = '/dev/full';
      c.listen.port = port;
      c.admin = { host: '127.0.0.1', port: adminPort };
    });
    const p = serve(file);
    const target = { ...h, origin: `https://127.0.0.1:${port}`, port };
    try {
      await until(() => p.stderr().includes('"msg":"exgate listening"'), 10_000, p.stderr);
      expect((await send(target, '/owa/')).status).toBe(401);
      await until(() => p.stderr().includes('cannot write the access log'), 5000, p.stderr);
      expect((await send(target, '/owa/?second')).status).toBe(401);
      await until(
        () =>
          p
            .stderr()
            .split('\n')
            .filter((l) => l.includes('"reason":"no-credentials"')).length >= 2,
        5000,
        p.stderr,
      );
      const metrics = await (await request(`http://127.0.0.1:${adminPort}/metrics`)).body.text();
      expect(Number(/^exgate_access_log_write_errors_total (\d+)/m.exec(metrics)?.[1])).toBeGreaterThanOrEqual(1);
      expect(await p.exited(100)).toBe('running');
    } finally {
      p.kill();
    }
  });
});
