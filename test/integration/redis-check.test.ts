/**
 * `state.redis` over TLS with a password (a real TLS-only redis-server with `requirepass`): the gateway
 * connects with the configured CA and password file, and `exgate check` says what it reached, the
 * version and the role; a replica named as the URL is a problem (the gateways write).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { check } from '../../src/commands/check.js';
import { makeCert, startHarness, type Harness } from '../helpers/gateway-harness.js';
import { startRedis, type RedisProcess } from '../helpers/redis.js';

const PASSWORD = 'redis-Secret-Pa55';

async function run(file: string): Promise<{ code: number; out: string }> {
  let out = '';
  const sink = {
    write: (s: string) => {
      out += s;
      return true;
    },
  };
  const code = await check(file, sink as unknown as NodeJS.WritableStream);
  return { code, out };
}

describe('state.redis over TLS, with a password', () => {
  let dir: string;
  let redis: RedisProcess;
  let plain: RedisProcess;
  let replica: RedisProcess;
  let h: Harness;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'exgate-redis-tls-'));
    makeCert(dir, 'redis', ['127.0.0.1']);
    writeFileSync(join(dir, 'redis-password'), `${PASSWORD}\n`, { mode: 0o600 });
    const tls = { cert: join(dir, 'redis.crt'), key: join(dir, 'redis.key') };
    redis = await startRedis({ tls, password: PASSWORD });
    plain = await startRedis();
    replica = await startRedis({ replicaOf: plain.port });
    const state = { redis: { url: redis.url, ca: tls.cert, passwordFile: join(dir, 'redis-password') } };
    h = await startHarness({ directory: 'ldap', gateway: { state } });
  });
  afterAll(async () => {
    await h?.close();
    for (const r of [redis, plain, replica]) await r?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('connects the gateway (exgate_state_up 1) and exgate check names the version and the master', async () => {
    const end = Date.now() + 10_000;
    while (!/^exgate_state_up 1/m.test(await h.running.metrics.registry.getSingleMetricAsString('exgate_state_up'))) {
      if (Date.now() > end) throw new Error('the gateway did not connect to Redis over TLS');
      await new Promise((r) => setTimeout(r, 50));
    }
    const { code, out } = await run(h.configFile);
    console.log(out.split('\n').find((l) => l.startsWith('state:')));
    expect(out).toMatch(/^state: ok \(Redis 7\.\d+\.\d+ at 127\.0\.0\.1:\d+, master, 1 instance\(s\)\)$/m);
    expect(code).toBe(0);
    expect(out).not.toContain(PASSWORD);
  });

  it('exgate check refuses a replica, and says why, naming the key', async () => {
    const config = parse(readFileSync(h.configFile, 'utf8')) as { state: { redis: Record<string, unknown> } };
    config.state.redis = { url: replica.url };
    const file = join(h.dir, 'replica.yaml');
    writeFileSync(file, stringify(config));
    const { code, out } = await run(file);
    expect(out).toMatch(/replica\.yaml.*state\.redis\.url: Redis 7\.\d+\.\d+ at .*role slave: exgate needs the master/);
    expect(code).toBe(1);
  });

  it('exgate check says a wrong password in words, without the password', async () => {
    writeFileSync(join(dir, 'wrong-password'), 'not-it\n');
    const config = parse(readFileSync(h.configFile, 'utf8')) as { state: { redis: Record<string, unknown> } };
    config.state.redis.passwordFile = join(dir, 'wrong-password');
    const file = join(h.dir, 'wrong.yaml');
    writeFileSync(file, stringify(config));
    const { code, out } = await run(file);
    expect(out).toMatch(/state\.redis\.url: cannot reach Redis: .*WRONGPASS/);
    expect(out).not.toContain('not-it');
    expect(code).toBe(1);
  });
});
