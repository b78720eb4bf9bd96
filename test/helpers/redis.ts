/**
 * A throwaway Redis for tests, like Samba (samba.ts): Debian's redis-server (and redis-sentinel) on
 * loopback ports, nothing saved (`--save ''`), in a temp dir, killed with the test. No mock.
 * `npm test`'s pretest installs redis-server and redis-sentinel when missing (scripts/ensure-test-deps.mjs).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { connect as connectTls } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './gateway-harness.js';

export interface RedisProcess {
  readonly port: number;
  readonly url: string;
  /** Ends it abruptly (SIGKILL), as a crashed host would; start() brings it back on the same port. */
  kill(): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** One command line's raw answer ('' when none came within `ms`); `tls`: over TLS (any certificate). */
export function command(port: number, line: string, ms = 500, tls = false): Promise<string> {
  return new Promise((resolve) => {
    const s = tls ? connectTls({ port, host: '127.0.0.1', rejectUnauthorized: false }) : connect(port, '127.0.0.1');
    let out = '';
    const done = (v: string) => {
      clearTimeout(timer);
      s.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(out), ms);
    s.on(tls ? 'secureConnect' : 'connect', () => s.write(`${line}\r\n`));
    s.on('data', (d) => {
      out += d.toString();
      if (out.endsWith('\r\n') && (!out.startsWith('$') || out.split('\r\n').length > 2)) done(out);
    });
    s.on('error', () => done(''));
  });
}

async function until(cond: () => Promise<boolean>, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function supervise(what: string, bin: string, args: string[], port: number, dir: string, tls = false): RedisProcess {
  let child: ChildProcess | null = null;
  const proc: RedisProcess = {
    port,
    url: `${tls ? 'rediss' : 'redis'}://127.0.0.1:${port}`,
    async start() {
      child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'inherit'] });
      // PING answers -NOAUTH when a password is required: either way it is up
      await until(async () => /^(\+PONG|-NOAUTH)/.test(await command(port, 'PING', 500, tls)), `${what} on ${port}`);
    },
    async kill() {
      const c = child;
      child = null;
      if (!c || c.exitCode !== null) return;
      const gone = new Promise((r) => c.once('exit', r));
      c.kill('SIGKILL');
      await gone;
    },
    async stop() {
      await proc.kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return proc;
}

/** A redis-server on a free loopback port; `replicaOf`: a replica of that port; `tls`: TLS only, with that pair. */
export async function startRedis(
  opts: { replicaOf?: number; tls?: { cert: string; key: string }; password?: string } = {},
): Promise<RedisProcess> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'exgate-redis-'));
  const args = [
    ...['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
    ...(opts.tls
      ? ['--port', '0', '--tls-port', String(port), '--tls-cert-file', opts.tls.cert, '--tls-key-file', opts.tls.key]
      : ['--port', String(port)]),
    ...(opts.tls ? ['--tls-auth-clients', 'no'] : []),
    ...(opts.password ? ['--requirepass', opts.password] : []),
    ...(opts.replicaOf ? ['--replicaof', '127.0.0.1', String(opts.replicaOf)] : []),
  ];
  const proc = supervise('redis-server', 'redis-server', args, port, dir, opts.tls !== undefined);
  await proc.start();
  return proc;
}

/** Three Sentinels watching `masterPort` as `name`: a master down 1 s is failed over. */
export async function startSentinels(masterPort: number, name = 'exgate'): Promise<RedisProcess[]> {
  const out: RedisProcess[] = [];
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'exgate-sentinel-'));
    const conf = join(dir, 'sentinel.conf'); // Sentinel rewrites its file: one each
    writeFileSync(
      conf,
      [
        `port ${port}`,
        'bind 127.0.0.1',
        `dir ${dir}`,
        `sentinel monitor ${name} 127.0.0.1 ${masterPort} 2`,
        `sentinel down-after-milliseconds ${name} 1000`,
        `sentinel failover-timeout ${name} 5000`,
        `sentinel parallel-syncs ${name} 1`,
        '',
      ].join('\n'),
    );
    const proc = supervise('redis-sentinel', 'redis-sentinel', [conf], port, dir);
    await proc.start();
    out.push(proc);
  }
  return out;
}
