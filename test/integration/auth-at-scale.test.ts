/**
 * The authentication path under attack and at scale, against the real Samba DC: smart lockout
 * that keeps AD's own counter below its threshold, password spraying from one address, group and
 * account changes within the cache TTL, accounts locked in AD, a DC that stops and comes back,
 * a dead first DC, and a bounded number of binds.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { USERS } from '../helpers/ad-fixtures.js';
import { bindDirect, createUser, readAttributes, setGroupMember } from '../helpers/ad-admin.js';
import {
  basic,
  clientFor,
  expectNotForwarded,
  EXTERNAL,
  send,
  sendOn,
  startHarness,
  type Harness,
  watchForwarded,
} from '../helpers/gateway-harness.js';
import { sambaAdmin, sambaControl } from '../helpers/samba.js';

const ldapUrl = inject('ldapUrl');
const admin = sambaAdmin(ldapUrl);
const tag = () => randomBytes(3).toString('hex');

/** A fine-grained password policy (PSO) with its own AD lockout threshold, applied to `sam`. */
async function lockoutPolicy(name: string, threshold: number, sam: string): Promise<void> {
  await admin.run([
    'domain',
    'passwordsettings',
    'pso',
    'create',
    name,
    '10',
    `--account-lockout-threshold=${threshold}`,
    '--account-lockout-duration=30',
    '--reset-account-lockout-after=30',
    '--complexity=off',
    '--min-pwd-length=1',
  ]);
  await admin.run(['domain', 'passwordsettings', 'pso', 'apply', name, sam]);
}

describe('smart lockout at the gateway', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({
      directory: 'ldap',
      gateway: { lockout: { threshold: 4, windowSeconds: 600, sourceAccounts: 5, sourceFailures: 1000 } },
    });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('keeps 200 wrong passwords from an unfamiliar address away from AD, and lets the user in from a familiar one', async () => {
    const u = await createUser(ldapUrl, `lock${tag()}`, 'Lock-Passw0rd!', ['AllowExternalAccess']);
    await lockoutPolicy(`ExgateLock${tag()}`, 10, u.sam);
    const home = { user: u.sam, password: u.password, localAddress: '127.0.0.1' };
    expect((await send(h, '/owa/', home)).status).toBe(200); // 127.0.0.1 is now familiar

    const attacker = clientFor(h, EXTERNAL, '127.0.0.2');
    const reasons = new Map<string, number>();
    const guesses = watchForwarded(h);
    try {
      for (let i = 0; i < 200; i++) {
        const r = await sendOn(attacker, '/owa/', EXTERNAL, { user: u.sam, password: `guess-${i}` });
        expect(r.status).toBe(401);
      }
    } finally {
      await attacker.close();
    }
    await guesses.expectNone('a wrong password reached Exchange');
    for (const rec of h.access.filter((x) => x.user === `LAB\\${u.sam}` && x.client === '127.0.0.2')) {
      reasons.set(rec.reason ?? '', (reasons.get(rec.reason ?? '') ?? 0) + 1);
    }
    expect(Object.fromEntries(reasons)).toEqual({ 'bad-credentials': 4, 'gateway-lockout': 196 });

    const ad = await readAttributes(ldapUrl, u.dn, ['badPwdCount', 'lockoutTime']);
    console.log('AD', JSON.stringify(ad));
    expect(Number(ad.badPwdCount)).toBeLessThanOrEqual(4); // AD's threshold is 10
    expect(Number(ad.lockoutTime || 0)).toBe(0); // never locked in AD

    expect((await send(h, '/owa/', home)).status).toBe(200);
    const locked = await expectNotForwarded(h, () => send(h, '/owa/', { ...home, localAddress: '127.0.0.2' }));
    expect(locked.status).toBe(401);
    expect(locked.headers['www-authenticate']).toMatch(/^Basic /);
    expect(
      (
        await h.record(
          (x) => x.client === '127.0.0.2' && x.status === 401 && x.detail !== null && x.reason === 'gateway-lockout',
        )
      ).user,
    ).toBe(`LAB\\${u.sam}`);
    expect(await bindDirect(ldapUrl, u.dn, u.password)).toBe('ok');
  });

  it('counts a repeated wrong password once (a phone with an old password)', async () => {
    const u = await createUser(ldapUrl, `phone${tag()}`, 'Phone-Passw0rd!', ['AllowExternalAccess']);
    const phone = clientFor(h, EXTERNAL, '127.0.0.4');
    const oldPassword = watchForwarded(h);
    try {
      for (let i = 0; i < 30; i++)
        expect(
          (
            await sendOn(phone, '/Microsoft-Server-ActiveSync?Cmd=Ping', EXTERNAL, {
              user: u.sam,
              password: 'the-old-password',
              method: 'POST',
              body: 'x',
            })
          ).status,
        ).toBe(401);
    } finally {
      await phone.close();
    }
    await oldPassword.expectNone('an old password reached Exchange');
    const ad = await readAttributes(ldapUrl, u.dn, ['badPwdCount']);
    expect(Number(ad.badPwdCount)).toBeLessThanOrEqual(1);
    expect((await send(h, '/owa/', { user: u.sam, password: u.password, localAddress: '127.0.0.4' })).status).toBe(200);
  });

  it('answers an address that sprays many accounts with 429, for every account, without binding', async () => {
    const sprayer = clientFor(h, EXTERNAL, '127.0.0.3');
    const statuses: number[] = [];
    const sprayed = watchForwarded(h);
    try {
      for (const name of ['bob', 'carol', 'dave', 'erin', 'henry', 'zoe', 'mallory', 'nobody1', 'nobody2']) {
        statuses.push((await sendOn(sprayer, '/owa/', EXTERNAL, { user: name, password: 'Spring2026!' })).status);
      }
      const right = await sendOn(sprayer, '/owa/', EXTERNAL, { user: 'alice', password: USERS.alice.password });
      expect(right.status).toBe(429);
      expect(Number(right.headers['retry-after'])).toBeGreaterThan(0);
    } finally {
      await sprayer.close();
    }
    await sprayed.expectNone('a sprayed request reached Exchange');
    expect(statuses.slice(0, 5)).toEqual([401, 401, 401, 401, 401]);
    expect(statuses.slice(5)).toEqual([429, 429, 429, 429]);
    expect((await h.record((x) => x.client === '127.0.0.3' && x.status === 429)).reason).toBe('gateway-lockout');
    expect(
      (await send(h, '/owa/', { user: 'alice', password: USERS.alice.password, localAddress: '127.0.0.1' })).status,
    ).toBe(200);
  });
});

describe('changes in AD within the cache TTL', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ directory: 'ldap', gateway: { cache: { authTtlSeconds: 300, groupTtlSeconds: 2 } } });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('answers from the cache, and says so in the access log', async () => {
    const creds = { user: 'carol', password: USERS.carol.password };
    const mark = h.mark();
    await send(h, '/owa/', creds);
    await send(h, '/owa/', creds);
    expect((await h.next(mark)).cache).toBe('miss');
    expect((await h.next(mark + 1)).cache).toBe('hit');
  });

  it('turns 200 into 403 within groupTtlSeconds of a removal from the group', async () => {
    const u = await createUser(ldapUrl, `leaver${tag()}`, 'Leav3r-Passw0rd!', ['AllowExternalAccess']);
    const creds = { user: u.sam, password: u.password };
    expect((await send(h, '/owa/', creds)).status).toBe(200);
    await setGroupMember(ldapUrl, 'delete', 'AllowExternalAccess', u.dn);
    const removedAt = Date.now();
    expect((await send(h, '/owa/', creds)).status).toBe(200); // still the cached standing
    await new Promise((r) => setTimeout(r, 2100 - (Date.now() - removedAt)));
    expect((await expectNotForwarded(h, () => send(h, '/owa/', creds))).status).toBe(403);
  });

  it('stops an account disabled in AD within groupTtlSeconds, although its password is cached', async () => {
    const u = await createUser(ldapUrl, `disabled${tag()}`, 'Disabl3d-Passw0rd!', ['AllowExternalAccess']);
    const creds = { user: u.sam, password: u.password };
    expect((await send(h, '/owa/', creds)).status).toBe(200);
    await admin.setDisabled(u.sam, true);
    await new Promise((r) => setTimeout(r, 2100));
    const r = await expectNotForwarded(h, () => send(h, '/owa/', creds));
    expect(r.status).toBe(401);
    expect((await h.record((x) => x.user === `LAB\\${u.sam}` && x.status === 401)).reason).toBe('account-disabled');
  });

  it('reports an account locked in AD as account-locked', async () => {
    const u = await createUser(ldapUrl, `adlocked${tag()}`, 'L0cked-Passw0rd!', ['AllowExternalAccess']);
    await lockoutPolicy(`ExgateAdLock${tag()}`, 3, u.sam);
    for (let i = 0; i < 4; i++) await bindDirect(ldapUrl, u.dn, `wrong-${i}`);
    expect(await bindDirect(ldapUrl, u.dn, u.password)).toBe('775');
    const r = await expectNotForwarded(h, () => send(h, '/owa/', { user: u.sam, password: u.password }));
    expect(r.status).toBe(401);
    expect((await h.record((x) => x.user === `LAB\\${u.sam}`)).reason).toBe('account-locked');
    expect(h.standin.seen((x) => x.user === u.sam)).toBe(0);
  });
});

describe('domain controllers failing', () => {
  it('skips a dead first DC: one attempt, not one per request', async () => {
    let connections = 0;
    const sockets = new Set<Socket>();
    const hole: Server = createServer((s) => {
      connections++;
      sockets.add(s);
      s.on('error', () => {});
    });
    await new Promise<void>((r) => hole.listen(0, '127.0.0.1', () => r()));
    const port = (hole.address() as { port: number }).port;
    const h = await startHarness({
      directory: 'ldap',
      directoryOverrides: {
        url: [`ldap://127.0.0.1:${port}`, ldapUrl],
        timeoutMs: 1000,
        connectTimeoutMs: 1000,
        dcRetrySeconds: 300,
      },
      gateway: { cache: { authTtlSeconds: 0, groupTtlSeconds: 0, negativeTtlSeconds: 0 } },
    });
    try {
      const before = connections;
      for (const name of ['alice', 'carol', 'zoe', 'grace', 'obrien', 'alice', 'carol', 'zoe', 'grace', 'obrien']) {
        const u = USERS[name as keyof typeof USERS];
        expect((await send(h, '/owa/', { user: u.sam, password: u.password })).status).toBe(200);
      }
      expect(connections - before).toBeLessThanOrEqual(1);
    } finally {
      await h.close();
      for (const s of sockets) s.destroy();
      hole.close();
    }
  });

  it('bounds concurrent binds: past the queue, 503 at once', async () => {
    const h = await startHarness({
      directory: 'ldap',
      directoryOverrides: { maxConcurrentBinds: 1, maxQueuedBinds: 0 },
      gateway: { cache: { authTtlSeconds: 0, groupTtlSeconds: 0, negativeTtlSeconds: 0 } },
    });
    const clients = Array.from({ length: 16 }, () => clientFor(h));
    try {
      await expectNotForwarded(h, () => Promise.all(clients.map((c) => sendOn(c, '/owa/', EXTERNAL, {})))); // connections warm
      const names = ['alice', 'carol', 'zoe', 'grace', 'obrien'] as const;
      const replies = await Promise.all(
        clients.map((c, i) => {
          const u = USERS[names[i % names.length] as (typeof names)[number]];
          return sendOn(c, `/owa/?bind=${i}`, EXTERNAL, { authorization: basic(u.sam, u.password) });
        }),
      );
      const statuses = replies.map((r) => r.status);
      expect(statuses.filter((s) => s === 503).length).toBeGreaterThan(0);
      expect(statuses.every((s) => s === 200 || s === 503)).toBe(true);
      await new Promise((r) => setTimeout(r, 20)); // let a wrongly forwarded request land
      const refusedButForwarded = statuses.flatMap((s, i) =>
        s === 503 && h.standin.seen((r) => r.url === `/owa/?bind=${i}`) > 0 ? [i] : [],
      );
      expect(refusedButForwarded, 'requests answered 503 that reached Exchange').toEqual([]);
      expect((await h.record((x) => x.status === 503)).detail).toMatch(/too many password checks waiting/);
    } finally {
      await Promise.all(clients.map((c) => c.close()));
      await h.close();
    }
  });

  it('answers 503 within 5 s when the DC stops, keeps cached users working under staleIfErrorSeconds, and recovers without a restart', async () => {
    const control = sambaControl(inject('sambaControlUrl'));
    const h = await startHarness({
      directory: 'ldap',
      directoryOverrides: { connectTimeoutMs: 1000, timeoutMs: 2000, dcRetrySeconds: 1 },
      gateway: { cache: { authTtlSeconds: 1, groupTtlSeconds: 1, staleIfErrorSeconds: 120 } },
    });
    const strict = await startHarness({
      directory: 'ldap',
      gateway: { cache: { authTtlSeconds: 1, groupTtlSeconds: 1, staleIfErrorSeconds: 0 } },
    });
    const alice = { user: 'alice', password: USERS.alice.password };
    const carol = { user: 'carol', password: USERS.carol.password };
    try {
      expect((await send(h, '/owa/', alice)).status).toBe(200);
      expect((await send(strict, '/owa/', alice)).status).toBe(200);
      await control.stopServer();
      await new Promise((r) => setTimeout(r, 1200)); // alice's entries are now past their TTL

      const started = Date.now();
      const uncached = await expectNotForwarded(h, () => send(h, '/owa/', carol));
      expect(uncached.status).toBe(503);
      expect(Date.now() - started).toBeLessThan(5000);

      const stale = await send(h, '/owa/', alice);
      expect(stale.status).toBe(200);
      expect((await h.record((x) => x.user === 'LAB\\alice' && x.cache === 'stale')).reason).toBe('allowed');
      expect((await expectNotForwarded(strict, () => send(strict, '/owa/', alice))).status).toBe(503); // without staleIfError: fail closed

      await control.startServer();
      await new Promise((r) => setTimeout(r, 1100)); // past the breaker's cooldown
      expect((await send(h, '/owa/', carol)).status).toBe(200);
      expect((await h.record((x) => x.user === 'LAB\\carol' && x.status === 200)).cache).toBe('miss');
    } finally {
      await control.startServer().catch(() => {});
      await h.close();
      await strict.close();
    }
  });
});
