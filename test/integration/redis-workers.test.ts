/**
 * `workers: 2` with `state.redis`: each worker is a member of its own on Redis (the primary's bus carries
 * nothing), so the lockout is one across the workers through Redis; the primary's /metrics shows
 * exgate_state_up as the minimum over the workers, 0 when Redis is killed.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { USERS } from '../helpers/ad-fixtures.js';
import { freePort, type Harness, send, startHarness } from '../helpers/gateway-harness.js';
import { type RedisProcess, startRedis } from '../helpers/redis.js';

let h: Harness;
let redis: RedisProcess;
let child: ChildProcess;
let port: number;
let adminPort: number;
let stderr = '';

beforeAll(async () => {
  redis = await startRedis();
  h = await startHarness({ directory: 'file' });
  await h.running.close(); // keep the stand-in and the files; serve as processes
  [port, adminPort] = [await freePort(), await freePort()];
  const config = parse(readFileSync(h.configFile, 'utf8')) as Record<string, unknown>;
  Object.assign(config, {
    workers: 2,
    listen: { host: '127.0.0.1', port },
    admin: { host: '127.0.0.1', port: adminPort },
    lockout: { threshold: 3, windowSeconds: 600, sourceAccounts: 1000, sourceFailures: 100000 },
    state: { redis: { url: redis.url, keyPrefix: 'workers:' } },
  });
  const file = join(h.dir, 'workers.yaml');
  writeFileSync(file, stringify(config));
  child = spawn(
    process.execPath,
    [join(import.meta.dirname, '..', '..', 'bin', 'exgate.js'), 'serve', '--config', file],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const end = Date.now() + 15_000;
  while ((stderr.match(/"msg":"exgate listening"/g) ?? []).length < 2) {
    if (Date.now() > end) throw new Error(`workers did not start:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
});
afterAll(async () => {
  child?.kill('SIGKILL');
  await h?.standin.close();
  await redis?.stop();
});

const target = () => ({ ...h, origin: `https://127.0.0.1:${port}`, port });
const stateUp = async () => {
  const text = await (await request(`http://127.0.0.1:${adminPort}/metrics`)).body.text();
  return Number(/^exgate_state_up (\d)/m.exec(text)?.[1]);
};
async function until(cond: () => Promise<boolean>, what: string): Promise<void> {
  const end = Date.now() + 10_000;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('workers on Redis', () => {
  it('keeps one lockout across the workers through Redis', async () => {
    await until(async () => (await stateUp()) === 1, 'both workers on Redis');
    for (const guess of ['w1', 'w2', 'w3']) {
      // a new connection each: spread over the workers
      expect((await send(target(), '/owa/', { user: 'grace', password: guess })).status).toBe(401);
    }
    await new Promise((r) => setTimeout(r, 200));
    for (let i = 0; i < 4; i++) {
      expect((await send(target(), '/owa/', { user: 'grace', password: USERS.grace.password })).status).toBe(401);
    }
    expect(h.standin.seen((r) => r.user === 'grace')).toBe(0);
    const pids = new Set([...stderr.matchAll(/"pid":(\d+)[^\n]*"msg":"exgate listening"/g)].map((m) => m[1]));
    expect(pids.size).toBe(2);
  });

  it('shows exgate_state_up 0 in the primary when Redis is killed, and keeps serving', async () => {
    await redis.kill();
    await until(async () => (await stateUp()) === 0, 'exgate_state_up 0');
    for (let i = 0; i < 4; i++) {
      expect((await send(target(), '/owa/', { user: 'alice', password: USERS.alice.password })).status).toBe(200);
    }
    await redis.start();
    await until(async () => (await stateUp()) === 1, 'exgate_state_up 1 again');
  });
});
