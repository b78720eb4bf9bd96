/**
 * The bench's lab: its settings (environment knobs, see proxy.ts), the child processes it starts
 * (each registered and stopped by its PID), the tools it needs (nginx, HAProxy, wrk), and a
 * temporary folder with an EC P-256 certificate, a file directory and a policy.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes, scryptSync } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer as createNetServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { processTree } from './procstat.js';

export const HERE = dirname(fileURLToPath(import.meta.url)); // .bench/bench once compiled
export const ROOT = resolve(HERE, '..', '..'); // the repository
export const EXGATE = join(ROOT, 'bin', 'exgate.js');
export const TEMPLATE = join(ROOT, 'bench', 'nginx.conf.template');

export function num(name: string, fallback: number): number {
  const v = process.env[name];
  return v !== undefined && v !== '' && Number.isFinite(Number(v)) ? Number(v) : fallback;
}

/**
 * Knobs (environment): BENCH_ROUNDS (3), BENCH_SECONDS (10), BENCH_WARMUP (2), BENCH_WRK_CONNECTIONS
 * (64), BENCH_UPSTREAM (plain | standin; plain), BENCH_PROFILE (auto | always | never; auto = when a
 * target is missed), BENCH_RESUME_CONNS (1500), BENCH_IDLE_CONNS (10000), BENCH_MEM_ROUNDS (1),
 * BENCH_UPLOAD_BYTES (1 GiB), BENCH_UPLOAD_ROUNDS (2), BENCH_RETRY_FOREIGN_PCT (20; 100 = never
 * measure again), BENCH_KEEP (keep the temp folder).
 */
export const S = {
  resumeConns: num('BENCH_RESUME_CONNS', 1500),
  rounds: num('BENCH_ROUNDS', 3),
  seconds: num('BENCH_SECONDS', 10),
  warmup: num('BENCH_WARMUP', 2),
  wrkConnections: num('BENCH_WRK_CONNECTIONS', 64),
  upstream: process.env.BENCH_UPSTREAM === 'standin' ? ('standin' as const) : ('plain' as const),
  profile: process.env.BENCH_PROFILE ?? 'auto',
  idleConns: num('BENCH_IDLE_CONNS', 10_000),
  memRounds: num('BENCH_MEM_ROUNDS', 1),
  uploadBytes: num('BENCH_UPLOAD_BYTES', 2 ** 30),
  uploadRounds: num('BENCH_UPLOAD_ROUNDS', 2),
  /** Before a measurement, wait (up to 5 s) until the box is less busy than this. */
  quietPct: 12,
  /** Measure again (once) when other processes used more than this share of the box meanwhile. */
  retryForeignPct: num('BENCH_RETRY_FOREIGN_PCT', 20),
};

/** Issue 16's targets (benchmarks, not tests). */
export const TARGETS = {
  /** Keep-alive GET: gateway CPU/req ÷ the bare forwarder, and ÷ nginx. */
  cpuBare: 1.3,
  cpuNginx: 3,
  /** A new TLS connection per request: gateway CPU/req ÷ nginx. */
  newConnNginx: 1.5,
  /** A resumed session's CPU ÷ a full handshake's. */
  resumedShare: 0.5,
  /** 1,000 rules and 10,000 groups ÷ 1 rule and 10 groups. */
  policyScale: 1.1,
  kbPerConn: 40,
  uploadMb: 64,
};
export const USER = 'alice';
export const PASSWORD = 'Bench-Passw0rd!';
export const AUTH = 'Basic ' + Buffer.from(`${USER}:${PASSWORD}`).toString('base64');
export const NAME = 'bench.lab.test';
/** 1 KiB from either upstream (the stand-in streams it chunked; the plain upstream sends Content-Length). */
export const GET_PATH = '/owa/standin/big?bytes=1024';
/** Client source addresses of the memory runs (all loopback): ephemeral ports never run short. */
export const SOURCES = Array.from({ length: 8 }, (_, i) => `127.0.0.${i + 2}`);

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Child processes: every one is registered and stopped by its PID.

const live = new Set<Child>();
let exitHook = false;

export class Child {
  readonly proc: ChildProcess;
  readonly exited: Promise<number | null>;
  #stderr = '';
  #stdout: string[] = [];
  #partial = '';
  readonly #listeners = new Set<(line: string) => void>();
  #gone = false;

  constructor(
    readonly name: string,
    cmd: string,
    args: readonly string[],
    env: NodeJS.ProcessEnv = {},
    /** Send stdout to this file instead of reading it (HAProxy's access log). */
    stdoutFile?: string,
  ) {
    if (!exitHook) {
      exitHook = true;
      // Last resort (an exception that skipped the finally blocks): nothing outlives the driver.
      process.once('exit', () => {
        for (const c of live) c.killTree();
      });
    }
    const out = stdoutFile ? openSync(stdoutFile, 'a') : 'pipe';
    this.proc = spawn(cmd, [...args], {
      cwd: ROOT,
      stdio: ['ignore', out, 'pipe'],
      env: { ...process.env, ...env },
    });
    if (typeof out === 'number') closeSync(out);
    live.add(this);
    this.proc.stdout?.setEncoding('utf8').on('data', (d: string) => {
      const parts = (this.#partial + d).split('\n');
      this.#partial = parts.pop() ?? '';
      for (const line of parts) {
        this.#stdout.push(line);
        if (this.#stdout.length > 400) this.#stdout.shift();
        for (const l of this.#listeners) l(line);
      }
    });
    this.proc.stderr!.setEncoding('utf8').on('data', (d: string) => {
      this.#stderr = (this.#stderr + d).slice(-4000);
    });
    this.exited = new Promise((resolveExit) => {
      const done = (code: number | null) => {
        if (this.#gone) return;
        this.#gone = true;
        live.delete(this);
        resolveExit(code);
      };
      // 'close': the process has exited and its stdio pipes are closed (no handle left behind).
      this.proc.once('close', (code, signal) => done(code ?? (signal ? -1 : null)));
      this.proc.once('error', (err) => {
        this.#stderr += `\n${err.message}`;
        done(-1);
      });
    });
  }

  get pid(): number {
    return this.proc.pid ?? -1;
  }

  get alive(): boolean {
    return !this.#gone;
  }

  get stdout(): string {
    return this.#stdout.join('\n');
  }

  get stderr(): string {
    return this.#stderr.trim();
  }

  kill(signal: NodeJS.Signals): void {
    if (this.#gone || this.pid < 0) return;
    try {
      process.kill(this.pid, signal);
    } catch {
      // already gone
    }
  }

  /** SIGKILL to the process and every descendant, each by its PID (nginx workers, cluster workers). */
  killTree(): void {
    if (this.#gone || this.pid < 0) return;
    for (const pid of processTree(this.pid).reverse()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }

  onLine(fn: (line: string) => void): void {
    this.#listeners.add(fn);
  }

  /** Resolves with the first JSON line for which `pick` returns something. */
  waitFor<T>(pick: (o: Record<string, unknown>) => T | undefined, timeoutMs: number, what: string): Promise<T> {
    return new Promise((resolveWait, reject) => {
      const check = (line: string) => {
        let o: unknown;
        try {
          o = JSON.parse(line);
        } catch {
          return;
        }
        const v = o && typeof o === 'object' ? pick(o as Record<string, unknown>) : undefined;
        if (v !== undefined) finish(() => resolveWait(v));
      };
      const timer = setTimeout(
        () => finish(() => reject(new Error(`${this.name}: timed out waiting for ${what}\n${this.stderr}`))),
        timeoutMs,
      );
      const finish = (f: () => void) => {
        clearTimeout(timer);
        this.#listeners.delete(check);
        f();
      };
      this.#listeners.add(check);
      void this.exited.then((code) =>
        finish(() => reject(new Error(`${this.name} exited (${code}) while waiting for ${what}\n${this.stderr}`))),
      );
      for (const line of this.#stdout) check(line);
    });
  }

  /** SIGTERM, then SIGKILL to the whole tree after `graceMs`. */
  async stop(graceMs = 5000): Promise<void> {
    if (!this.alive) return;
    this.kill('SIGTERM');
    const t = setTimeout(() => this.killTree(), graceMs);
    await this.exited;
    clearTimeout(t);
  }
}

export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((c) => c.stop()));
  // A child's process handle finishes closing in the loop's next close phase.
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
}

/** Runs a suite; whatever happens, every process it started is stopped and its folder removed. */
export async function suite<T>(fn: (lab: Lab) => Promise<T>): Promise<T> {
  ensureTools();
  let labDir = '';
  const onSignal = () => {
    for (const c of live) c.killTree();
    if (labDir && !process.env.BENCH_KEEP) rmSync(labDir, { recursive: true, force: true });
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const lab = makeLab();
  labDir = lab.dir;
  try {
    return await fn(lab);
  } finally {
    await stopAll();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (!process.env.BENCH_KEEP) rmSync(lab.dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Tools, certificate, directory, policy

export function which(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  return dirs
    .filter(Boolean)
    .map((d) => join(d, name))
    .find((p) => existsSync(p));
}

/** The Debian package of each tool the proxy benchmarks run. */
const TOOLS: Record<string, string> = { nginx: 'nginx-light', haproxy: 'haproxy', wrk: 'wrk' };

/** nginx (Debian nginx-light), HAProxy and wrk; installed with apt-get when missing and running as root. */
export function ensureTools(): void {
  const missing = Object.entries(TOOLS)
    .filter(([tool]) => !which(tool))
    .map(([, pkg]) => pkg);
  if (missing.length === 0) return;
  const isRoot = process.getuid?.() === 0;
  if (!isRoot || !which('apt-get')) {
    throw new Error(
      `the proxy benchmarks need ${missing.join(' and ')}: run as root on Debian/Ubuntu, or install them: apt-get install -y ${missing.join(' ')}`,
    );
  }
  const aptEnv = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () =>
    spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...missing], {
      stdio: ['ignore', 'inherit', 'inherit'],
      env: aptEnv,
    });
  process.stderr.write(`[bench] installing ${missing.join(' ')} with apt-get\n`);
  if (install().status !== 0) {
    spawnSync('apt-get', ['update'], { stdio: ['ignore', 'inherit', 'inherit'], env: aptEnv });
    const again = install();
    if (again.status !== 0) throw new Error(`apt-get install ${missing.join(' ')} failed (exit ${again.status})`);
  }
  const still = Object.keys(TOOLS).filter((tool) => !which(tool));
  if (still.length > 0) throw new Error(`apt-get finished but ${still.join(' and ')} is still missing`);
}

export function versionOf(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim().split('\n')[0] ?? '?';
}

export interface Lab {
  readonly dir: string;
  readonly cert: string;
  readonly key: string;
  readonly users: string;
  readonly policy: string;
}

/** A folder with an EC P-256 certificate (for every server), a one-user file directory and a policy. */
export function makeLab(): Lab {
  const dir = mkdtempSync(join(tmpdir(), 'exgate-proxybench-'));
  chmodSync(dir, 0o755); // nginx workers (nobody) reach their temp folders
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-days',
      '2',
      '-subj',
      `/CN=${NAME}`,
      '-addext',
      `subjectAltName=DNS:${NAME},IP:127.0.0.1`,
      '-keyout',
      key,
      '-out',
      cert,
    ],
    { stdio: 'ignore' },
  );
  const salt = randomBytes(16);
  const hash = scryptSync(PASSWORD, salt, 32, { N: 1024, r: 8, p: 1 });
  const users = join(dir, 'users.yaml');
  writeFileSync(
    users,
    stringify({
      users: {
        [USER]: {
          password: `scrypt$1024$8$1$${salt.toString('base64')}$${hash.toString('base64')}`,
          name: 'Bench User',
        },
      },
      groups: { BenchUsers: { members: [USER] } },
    }),
  );
  const policy = join(dir, 'policy.yaml');
  writeFileSync(
    policy,
    stringify({
      mode: 'enforce',
      rules: [{ id: 'bench', services: ['owa', 'ews', 'activesync'], allow: { groups: ['BenchUsers'] } }],
    }),
  );
  return { dir, cert, key, users, policy };
}

export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const s = createNetServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolvePort(port));
    });
  });
}

/** Waits until something accepts TCP on the port, failing early if the child exits. */
export async function listening(child: Child, port: number, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!child.alive) throw new Error(`${child.name} exited before listening on ${port}:\n${child.stderr}`);
    const ok = await new Promise<boolean>((r) => {
      const s = netConnect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        r(true);
      });
      s.once('error', () => r(false));
    });
    if (ok) return;
    await sleep(100);
  }
  throw new Error(`${child.name} is not listening on ${port} after ${timeoutMs} ms:\n${child.stderr}`);
}
