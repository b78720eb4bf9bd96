/**
 * A throwaway Redis for tests, like Samba (samba.ts): Debian's redis-server (and redis-sentinel) on
 * loopback ports, nothing saved (`--save ''`), in a temp dir, killed with the test. No mock.
 * `npm test`'s pretest installs redis-server and redis-sentinel when missing (scripts/ensure-test-deps.mjs).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
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

/** Answers PING with +PONG (and, for a replica, is in sync: master_link_status:up)? */
export function command(port: number, line: string, ms = 500): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let out = '';
    const done = (v: string) => {
      clearTimeout(timer);
      s.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(out), ms);
    s.on('connect', () => s.write(`${line}\r\n`));
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

function supervise(what: string, bin: string, args: string[], port: number, dir: string): RedisProcess {
  let child: ChildProcess | null = null;
  const proc: RedisProcess = {
    port,
    url: `redis://127.0.0.1:${port}`,
    async start() {
      child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'inherit'] });
      await until(async () => (await command(port, 'PING')).startsWith('+PONG'), `${what} on ${port}`);
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

/** A redis-server on a free loopback port; `replicaOf`: a replica of that port. */
export async function startRedis(opts: { replicaOf?: number } = {}): Promise<RedisProcess> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'exgate-redis-'));
  const args = [
    ...['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
    ...(opts.replicaOf ? ['--replicaof', '127.0.0.1', String(opts.replicaOf)] : []),
  ];
  const proc = supervise('redis-server', 'redis-server', args, port, dir);
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
