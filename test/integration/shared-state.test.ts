/**
 * Two gateways on one real Redis (issue 15), against the real Samba DC: wrong passwords spread over both
 * and in parallel bursts bind at most `threshold` times in all; a browser session made on one is valid on
 * the other and a sign-out on either ends it on both; one tunnel cap; Redis killed and back; and a Sentinel
 * failover. Both gateways front one Exchange stand-in, as two gateways front one Exchange.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type TLSSocket } from 'node:tls';
import { Redis } from 'ioredis';
import type { Client } from 'undici';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createUser, readAttributes } from '../helpers/ad-admin.js';
import { USERS } from '../helpers/ad-fixtures.js';
import {
  basic,
  clientFor,
  EXTERNAL,
  makeCert,
  type Reply,
  send,
  sendOn,
  startHarness,
  TEST_POLICY,
  type Harness,
} from '../helpers/gateway-harness.js';
import { startRpcUpstream, type RpcUpstream } from '../helpers/rpc-upstream.js';
import { command, startRedis, startSentinels, type RedisProcess } from '../helpers/redis.js';
import { sambaAdmin } from '../helpers/samba.js';

const ldapUrl = inject('ldapUrl');
const admin = sambaAdmin(ldapUrl);
const tag = () => randomBytes(3).toString('hex');
const THRESHOLD = 4;
const EWS = '/EWS/Exchange.asmx';
const ATTACKER = '127.0.0.2';
const alice = USERS.alice;

/** A fine-grained password policy (PSO) with AD lockout threshold 10, applied to `sam` (auth-at-scale.test.ts). */
async function adLockoutAt10(sam: string): Promise<void> {
  const name = `ExgateShared${tag()}`;
  await admin.run([
    ...['domain', 'passwordsettings', 'pso', 'create', name, '10', '--account-lockout-threshold=10'],
    ...['--account-lockout-duration=30', '--reset-account-lockout-after=30', '--complexity=off', '--min-pwd-length=1'],
  ]);
  await admin.run(['domain', 'passwordsettings', 'pso', 'apply', name, sam]);
}

/** Two gateways sharing `state`, in front of the first one's stand-in (or of `upstream`). */
async function twoGateways(state: object, extra: { upstream?: object; policy?: string; services?: object } = {}) {
  const gateway = (upstream?: object) => ({
    state,
    lockout: { threshold: THRESHOLD, windowSeconds: 600, sourceAccounts: 1000, sourceFailures: 100_000 },
    cache: { groupTtlSeconds: 1 },
    ...(upstream ? { upstream } : {}),
    ...(extra.services ? { services: extra.services } : {}),
  });
  const common = { directory: 'ldap', forms: true, ...(extra.policy ? { policy: extra.policy } : {}) } as const;
  const formsUsers = { [alice.sam]: alice.password };
  const g1 = await startHarness({ ...common, standin: { formsUsers }, gateway: gateway(extra.upstream) });
  const shared = extra.upstream ?? { url: g1.standin.url, ca: join(g1.dir, 'upstream-ca.pem') };
  const g2 = await startHarness({
    ...common,
    gateway: gateway({ servername: 'exchange-be.lab.test', ...shared }),
  });
  return [g1, g2] as const;
}

async function stateUp(h: Harness): Promise<number> {
  const text = await h.running.metrics.registry.getSingleMetricAsString('exgate_state_up');
  return Number(/^exgate_state_up (\d)/m.exec(text)?.[1]);
}

async function until(cond: () => Promise<boolean> | boolean, what: string, ms = 15_000): Promise<number> {
  const start = Date.now();
  while (!(await cond())) {
    if (Date.now() - start > ms) throw new Error(`timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return Date.now() - start;
}

/** Wrong passwords for `sam` from the attacker's address: `n`, spread over the gateways as `pick` says. */
async function attack(gws: readonly Harness[], sam: string, n: number, pick = (i: number) => i % gws.length) {
  const statuses: number[] = [];
  const clients = gws.map((g) => Array.from({ length: 10 }, () => clientFor(g, EXTERNAL, ATTACKER)));
  try {
    for (let i = 0; i < n; ) {
      // 20 one at a time, alternating; then a burst of 20 at once over every gateway
      for (const end = Math.min(n, i + 20); i < end; i++) {
        const c = clients[pick(i)]?.[0] as Client;
        statuses.push((await sendOn(c, EWS, EXTERNAL, { user: sam, password: `guess-${i}-${tag()}` })).status);
      }
      const burst = Array.from({ length: Math.min(20, n - i) }, (_, j) => {
        const c = clients[pick(i + j)]?.[j % 10] as Client;
        return sendOn(c, EWS, EXTERNAL, { user: sam, password: `guess-${i + j}-${tag()}` });
      });
      i += burst.length;
      statuses.push(...(await Promise.all(burst)).map((r) => r.status));
    }
  } finally {
    await Promise.all(clients.flat().map((c) => c.close()));
  }
  return statuses;
}

/** The wrong passwords that reached AD through each gateway: its bad-credentials records for `sam`. */
function binds(gws: readonly Harness[], sam: string): number[] {
  return gws.map((g) => g.access.filter((r) => r.user === `LAB\\${sam}` && r.reason === 'bad-credentials').length);
}

/** A browser's cookies, carried by hand from one gateway to the other. */
class Jar {
  readonly cookies = new Map<string, string>();
  header(): Record<string, string> {
    return this.cookies.size ? { cookie: [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ') } : {};
  }
  take(r: Reply): Reply {
    const set = r.headers['set-cookie'];
    for (const c of set === undefined ? [] : Array.isArray(set) ? set : [set]) {
      const [pair = ''] = c.split(';');
      const eq = pair.indexOf('=');
      if (/max-age=0/i.test(c)) this.cookies.delete(pair.slice(0, eq).trim());
      else this.cookies.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
    }
    return r;
  }
}

async function signIn(h: Harness, jar: Jar, sam: string, password: string): Promise<Reply> {
  const destination = encodeURIComponent(`https://${EXTERNAL}/owa/`);
  const body =
    `destination=${destination}&flags=4&forcedownlevel=0&username=${sam}` +
    `&password=${encodeURIComponent(password)}&passwordText=&isUtf8=1`;
  const headers = { 'content-type': 'application/x-www-form-urlencoded', ...jar.header() };
  return jar.take(await send(h, '/owa/auth.owa', { method: 'POST', body, headers }));
}

const get = async (h: Harness, jar: Jar, path: string) => jar.take(await send(h, path, { headers: jar.header() }));

describe('two gateways on one Redis', () => {
  let redis: RedisProcess;
  let g: readonly [Harness, Harness];
  const prefix = `it${tag()}:`;
  beforeAll(async () => {
    redis = await startRedis();
    g = await twoGateways({ redis: { url: redis.url, keyPrefix: prefix }, instances: 2 });
    for (const h of g) await until(async () => (await stateUp(h)) === 1, 'connected to Redis');
  });
  afterAll(async () => {
    for (const h of g ?? []) await h.close();
    await redis?.stop();
  });

  it('binds at most threshold wrong passwords in all for 1,000 spread over both, AD stays unlocked', async () => {
    const u = await createUser(ldapUrl, `shared${tag()}`, 'Shared-Passw0rd!', ['AllowExternalAccess']);
    await adLockoutAt10(u.sam);
    const home = { user: u.sam, password: u.password, localAddress: '127.0.0.1' };
    expect((await send(g[0], EWS, home)).status).toBe(200); // 127.0.0.1 becomes familiar, on both
    const statuses = await attack(g, u.sam, 1000);
    expect(statuses.filter((s) => s === 200)).toEqual([]);
    const [b1, b2] = binds(g, u.sam);
    const ad = await readAttributes(ldapUrl, u.dn, ['badPwdCount', 'lockoutTime']);
    console.log('shared lockout: binds', b1, '+', b2, 'AD', JSON.stringify(ad), 'statuses', countOf(statuses));
    expect((b1 ?? 0) + (b2 ?? 0)).toBeLessThanOrEqual(THRESHOLD);
    expect(Number(ad.badPwdCount)).toBeLessThanOrEqual(THRESHOLD); // AD's own threshold is 10
    expect(Number(ad.lockoutTime || 0)).toBe(0);
    expect((await send(g[1], EWS, home)).status).toBe(200); // the user, from home, through the other gateway
  });

  it('carries an OWA session: made on gateway 1, valid on 2; signed out on 2, ended on 1 within 1 s', async () => {
    const jar = new Jar();
    expect((await signIn(g[0], jar, alice.sam, alice.password)).status).toBe(302);
    const before = g[0].standin.requests.length;
    await until(async () => (await get(g[1], jar, '/owa/')).status === 200, 'the session on gateway 2', 1000);
    expect(g[0].standin.requests.slice(before).some((r) => r.user === 'LAB\\alice')).toBe(true);
    const copy = new Jar();
    for (const [k, v] of jar.cookies) copy.cookies.set(k, v);
    expect((await get(g[1], jar, '/owa/logoff.owa')).status).toBe(302);
    const ms = await until(async () => (await get(g[0], copy, '/owa/')).status !== 200, 'ended on gateway 1', 1000);
    console.log(`sign-out on gateway 2 reached gateway 1 in ${ms} ms`);
  });

  it('leaves no key without an expiry', async () => {
    const r = new Redis({ port: redis.port, host: '127.0.0.1' });
    try {
      const keys = await r.keys(`${prefix}*`);
      expect(keys.length).toBeGreaterThan(0);
      const ttls = await Promise.all(keys.map(async (k) => [k, await r.pttl(k)] as const));
      expect(ttls.filter(([, t]) => t < 0)).toEqual([]);
    } finally {
      r.disconnect();
    }
  });

  it('keeps serving with Redis killed (split threshold, one log line, state_up 0), shares once back', async () => {
    const jar = new Jar();
    expect((await signIn(g[0], jar, alice.sam, alice.password)).status).toBe(302);
    await until(async () => (await get(g[1], jar, '/owa/')).status === 200, 'the session on gateway 2', 1000);
    const copy = new Jar();
    for (const [k, v] of jar.cookies) copy.cookies.set(k, v);
    await redis.kill();
    for (const h of g) await until(async () => (await stateUp(h)) === 0, 'exgate_state_up 0');
    for (const h of g) expect((await get(h, copy, '/owa/')).status).toBe(200); // sessions made before: kept
    expect((await get(g[1], jar, '/owa/logoff.owa')).status).toBe(302); // a sign-out during the outage
    expect((await get(g[0], copy, '/owa/')).status).toBe(200); // …reaches gateway 1 when Redis is back
    const u = await createUser(ldapUrl, `alone${tag()}`, 'Alone-Passw0rd!', ['AllowExternalAccess']);
    await adLockoutAt10(u.sam);
    const statuses = await attack(g, u.sam, 200);
    expect(statuses.filter((s) => s === 200)).toEqual([]);
    const split = binds(g, u.sam);
    console.log('Redis down: binds per gateway', split);
    for (const n of split) expect(n).toBeLessThanOrEqual(THRESHOLD / 2); // max(1, floor(4 / 2))
    expect(Number((await readAttributes(ldapUrl, u.dn, ['badPwdCount'])).badPwdCount)).toBeLessThanOrEqual(THRESHOLD);
    for (const h of g) {
      expect((await send(h, EWS, { user: alice.sam, password: alice.password })).status).toBe(200);
      expect(h.allLogText().split('Redis unreachable').length - 1).toBe(1);
    }

    await redis.start();
    for (const h of g) await until(async () => (await stateUp(h)) === 1, 'exgate_state_up 1 again');
    await until(async () => (await get(g[0], copy, '/owa/')).status !== 200, 'the sign-out told when back', 3000);
    const v = await createUser(ldapUrl, `back${tag()}`, 'Back-Passw0rd!', ['AllowExternalAccess']);
    await attack([g[0]], v.sam, 20); // all on gateway 1: shared, it may bind the whole threshold…
    await attack([g[1]], v.sam, 20); // …and then gateway 2 none
    expect(binds(g, v.sam)).toEqual([THRESHOLD, 0]);
    for (const h of g) expect(h.allLogText().split('Redis is reachable again').length - 1).toBe(1);
  });
});

describe('two gateways on one Redis: the Outlook Anywhere tunnel cap per address', () => {
  let redis: RedisProcess;
  let rpc: RpcUpstream;
  let g: readonly [Harness, Harness];
  beforeAll(async () => {
    redis = await startRedis();
    const dir = (await import('node:fs')).mkdtempSync(join((await import('node:os')).tmpdir(), 'exgate-rpc-'));
    const cert = makeCert(dir, 'rpc', ['exchange-be.lab.test']);
    writeFileSync(join(dir, 'rpc-ca.pem'), cert.cert);
    rpc = await startRpcUpstream(cert, 1 << 30, 0); // RPC_IN_DATA: holds the tunnel open
    const oa = '  - id: oa\n    services: [rpc]\n    allow: { groups: [AllowExternalAccess] }\n';
    const policy = `${TEST_POLICY.replace('services: [rpc, ecp,', 'services: [ecp,')}${oa}`;
    g = await twoGateways(
      { redis: { url: redis.url, keyPrefix: `rpc${tag()}:` }, instances: 2 },
      {
        upstream: { url: rpc.url, ca: join(dir, 'rpc-ca.pem'), servername: 'exchange-be.lab.test' },
        policy,
        services: { rpc: { maxTunnelsPerSource: 1 } },
      },
    );
    for (const h of g) await until(async () => (await stateUp(h)) === 1, 'connected to Redis');
  });
  afterAll(async () => {
    for (const h of g ?? []) await h.close();
    await rpc?.close();
    await redis?.stop();
  });

  it('allows one tunnel per address over both gateways; the others get 429 and reach nothing', async () => {
    const sockets: TLSSocket[] = [];
    const replies = ['', '', '', ''];
    for (let i = 0; i < 4; i++) {
      const h = g[i % 2] as Harness;
      const s = await new Promise<TLSSocket>((resolve, reject) => {
        const c = connect({ host: '127.0.0.1', port: h.port, servername: EXTERNAL, ca: h.gatewayCa }, () => resolve(c));
        c.once('error', reject);
      });
      s.on('data', (d: Buffer) => {
        replies[i] += d.toString('latin1');
      });
      s.on('error', () => {});
      s.write(
        `RPC_IN_DATA /rpc/rpcproxy.dll?exchange-be.lab.test:6001 HTTP/1.1\r\nHost: ${EXTERNAL}\r\n` +
          `Authorization: ${basic('alice', alice.password)}\r\nContent-Length: 1073741824\r\nUser-Agent: MSRPC\r\n\r\n`,
      );
      sockets.push(s);
      await new Promise((r) => setTimeout(r, 300));
    }
    expect(replies.filter((r) => r === '').length).toBe(1); // the one tunnel: open, nothing answered yet
    expect(replies.filter((r) => r.startsWith('HTTP/1.1 429 Too Many Requests')).length).toBe(3);
    expect(rpc.seen.filter((x) => x.head.startsWith('RPC_IN_DATA')).length).toBe(1);
    for (const s of sockets) s.destroy();
  });
});

describe('two gateways on Redis with Sentinel: the master killed mid-run', () => {
  let master: RedisProcess;
  let replica: RedisProcess;
  let sentinels: RedisProcess[] = [];
  let g: readonly [Harness, Harness];
  beforeAll(async () => {
    master = await startRedis();
    replica = await startRedis({ replicaOf: master.port });
    sentinels = await startSentinels(master.port, 'exgate');
    await until(
      async () => (await command(sentinels[0]!.port, 'SENTINEL REPLICAS exgate')).includes(String(replica.port)),
      'the Sentinels know the replica',
      30_000,
    );
    const redis = { sentinels: sentinels.map((s) => `127.0.0.1:${s.port}`), name: 'exgate', keyPrefix: `s${tag()}:` };
    g = await twoGateways({ redis, instances: 2 });
    for (const h of g) await until(async () => (await stateUp(h)) === 1, 'connected through the Sentinels');
  });
  afterAll(async () => {
    for (const h of g ?? []) await h.close();
    for (const p of [...sentinels, replica, master]) await p?.stop();
  });

  it('resumes shared state on the promoted replica', async () => {
    const u = await createUser(ldapUrl, `sent${tag()}`, 'Sent-Passw0rd!', ['AllowExternalAccess']);
    await attack([g[0]], u.sam, 10);
    expect(binds(g, u.sam)).toEqual([THRESHOLD, 0]);
    await new Promise((r) => setTimeout(r, 200)); // replicated (asynchronously) before the master dies
    const killed = Date.now();
    await master.kill();
    for (const h of g) await until(async () => (await stateUp(h)) === 0, 'the outage seen', 10_000);
    for (const h of g) await until(async () => (await stateUp(h)) === 1, 'shared again on the replica', 30_000);
    console.log(`Sentinel failover: shared state again ${Date.now() - killed} ms after the master was killed`);
    expect((await command(replica.port, 'ROLE')).includes('master')).toBe(true);
    await attack([g[1]], u.sam, 10); // the counts made before the failover survived it
    const v = await createUser(ldapUrl, `sent${tag()}`, 'Sent-Passw0rd!', ['AllowExternalAccess']);
    await attack([g[1]], v.sam, 10);
    await attack([g[0]], v.sam, 10);
    console.log('after failover: binds', binds(g, u.sam), binds(g, v.sam));
    expect(binds(g, u.sam)).toEqual([THRESHOLD, 0]);
    expect(binds(g, v.sam)).toEqual([0, THRESHOLD]);
  });
});

function countOf(xs: number[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of xs) out[x] = (out[x] ?? 0) + 1;
  return out;
}
