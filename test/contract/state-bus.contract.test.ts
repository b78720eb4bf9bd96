/**
 * Runs the one StateBus contract (state-bus-contract.ts) against every implementation: members of
 * an in-process Hub, and workers (real forked processes on the built IpcBus; `npm run build`
 * first) with this process as their primary (servePrimary). A killed worker is a dead member. And
 * gateways on one real Redis (RedisBus; test/helpers/redis.ts): a gateway that stops beating is a dead one.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Lockout, type Attempt, type LockoutVerdict } from '../../src/auth/lockout.js';
import type { BusEvent, Slot, StateBus } from '../../src/state/bus.js';
import { IpcBus } from '../../src/state/ipc-bus.js';
import { servePrimary } from '../../src/state/ipc-primary.js';
import { Hub } from '../../src/state/local-bus.js';
import { RedisBus } from '../../src/state/redis-bus.js';
import { startRedis, type RedisProcess } from '../helpers/redis.js';
import { runStateBusContract, SETTINGS, type BusCluster } from './state-bus-contract.js';

runStateBusContract('in-process members of a Hub', async (settings) => {
  const authority = new Lockout(settings);
  const hub = new Hub(authority, { retainMax: 1000 });
  const members = new Set<StateBus>();
  return {
    authority,
    join: async () => {
      const m = hub.join();
      members.add(m);
      return m;
    },
    kill: async (m) => m.close(),
    close: async () => {
      for (const m of members) m.close();
    },
  };
});

runStateBusContract('workers over IPC to the primary', async (settings) => {
  const authority = new Lockout(settings);
  const primary = servePrimary(new Hub(authority, { retainMax: 1000 }));
  const children = new Map<StateBus, ChildProcess>();
  const cluster: BusCluster = {
    authority,
    join: async () => {
      const script = join(import.meta.dirname, 'state-bus-member.mjs');
      const child = fork(script, [JSON.stringify(settings)], { execArgv: [], stdio: 'inherit' });
      primary.attach(child);
      const member = remoteMember(child);
      children.set(member, child);
      await new Promise<void>((resolve, reject) => {
        child.on('message', (m: { ctl?: string }) => {
          if (m?.ctl === 'ready') resolve();
        });
        child.once('exit', (code) => reject(new Error(`the member exited (${code})`)));
      });
      return member;
    },
    kill: async (m) => {
      const child = children.get(m);
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await gone;
    },
    close: async () => {
      await Promise.all([...children.keys()].map((m) => cluster.kill(m)));
    },
  };
  return cluster;
});

let redis: Promise<RedisProcess> | null = null;
afterAll(async () => (await redis)?.stop());
let prefixes = 0;

runStateBusContract('gateways on one Redis', async (settings) => {
  const server = await (redis ??= startRedis());
  const redisSettings = {
    url: server.url,
    sentinels: [],
    name: null,
    tls: false,
    ca: undefined,
    password: null,
    keyPrefix: `contract${++prefixes}:`, // each test its own deployment
    commandTimeoutMs: 500,
  };
  const silent = { warn: () => {}, info: () => {} };
  const member = async (lockout: Lockout) => {
    const bus = new RedisBus(lockout, { redis: redisSettings, instances: 1, log: silent, holdMs: 600 });
    await bus.whenUp();
    return bus;
  };
  const authority = new Lockout(settings);
  const members = new Set<RedisBus>([await member(authority)]);
  authority.connect([...members][0] as RedisBus);
  return {
    authority,
    join: async () => {
      const m = await member(new Lockout(settings)); // its own: the replica and the fallback
      members.add(m);
      return m;
    },
    kill: async (m) => (m as RedisBus).abandon(),
    close: async () => {
      for (const m of members) m.close();
    },
  };
});

/** The test's handle on a forked member: each call is a `ctl` message, answered by the child. */
function remoteMember(child: ChildProcess): StateBus {
  let next = 0;
  const answers = new Map<number, (a: { verdict?: LockoutVerdict; ok?: boolean }) => void>();
  const events: BusEvent[] = [];
  const handlers = new Set<(e: BusEvent) => void>();
  child.on('message', (m: { ctl?: string; cid?: number; event?: BusEvent; verdict?: LockoutVerdict; ok?: boolean }) => {
    if (m?.ctl === 'event') {
      events.push(m.event!);
      for (const h of handlers) h(m.event!);
    } else if (m?.ctl === 'answer') {
      answers.get(m.cid!)?.(m);
      answers.delete(m.cid!);
    }
  });
  const ask = (msg: object) =>
    new Promise<{ cid: number; verdict?: LockoutVerdict; ok?: boolean }>((resolve) => {
      const cid = ++next;
      answers.set(cid, (a) => resolve({ cid, ...a }));
      child.send({ ...msg, cid });
    });
  const release = (cid: number) => () => {
    if (child.connected) child.send({ ctl: 'release', cid });
  };
  return {
    publish: (event) => {
      child.send({ ctl: 'publish', event });
    },
    subscribe: (h) => {
      for (const e of events) h(e);
      handlers.add(h);
      return () => handlers.delete(h);
    },
    reserve: async (account, source, fingerprint): Promise<Attempt> => {
      const a = await ask({ ctl: 'reserve', account, source, fingerprint });
      return { verdict: a.verdict ?? 'busy', release: release(a.cid) };
    },
    acquireSlot: async (key, cap): Promise<Slot | null> => {
      const a = await ask({ ctl: 'slot', key, cap });
      return a.ok ? { release: release(a.cid) } : null;
    },
    close: () => child.kill('SIGKILL'),
  };
}

// Not part of the contract: what only the IPC bus has. A slow or gone primary never stops sign-ins;
// the worker decides alone, as one process would (and as workers did before the bus).
describe('IpcBus without an answering primary', () => {
  const silentPrimary = () =>
    spawn(process.execPath, ['-e', 'process.on("message", () => {})'], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });

  it("decides alone after the lockout's wait and a grace: its own Lockout reserves, its own count caps", async () => {
    const primary = silentPrimary();
    try {
      const bus = new IpcBus(primary, new Lockout({ ...SETTINGS, waitMs: 100 }), 50);
      const started = Date.now();
      const attempts = await Promise.all(
        ['p0', 'p1', 'p2', 'p3'].map((p) => bus.reserve('cn=alice', '203.0.113.5', p)),
      );
      expect(Date.now() - started).toBeGreaterThanOrEqual(140);
      expect(attempts.map((a) => a.verdict).sort()).toEqual(['busy', 'open', 'open', 'open']);
      const [one, two] = [await bus.acquireSlot('k', 1), await bus.acquireSlot('k', 1)];
      expect(one).not.toBeNull();
      expect(two).toBeNull();
      bus.close();
    } finally {
      primary.kill('SIGKILL');
    }
  });

  it('decides alone at once when the channel to the primary is closed', async () => {
    const primary = silentPrimary();
    const bus = new IpcBus(primary, new Lockout(SETTINGS), 60_000);
    const gone = new Promise((r) => primary.once('exit', r));
    primary.kill('SIGKILL');
    await gone;
    const started = Date.now();
    expect((await bus.reserve('cn=alice', '203.0.113.5', 'p0')).verdict).toBe('open');
    expect(await bus.acquireSlot('k', 1)).not.toBeNull();
    expect(Date.now() - started).toBeLessThan(1000);
    bus.close();
  });
});

// Not part of the contract: what only the Redis bus has. One wrong password in flight on two gateways
// binds once (AD counts every bad bind); and with Redis away each gateway counts against its share.
describe('RedisBus beyond the contract', () => {
  const silent = { warn: () => {}, info: () => {} };
  const settingsFor = (url: string) => ({
    url,
    sentinels: [],
    name: null,
    tls: false,
    ca: undefined,
    password: null,
    keyPrefix: `extra${++prefixes}:`,
    commandTimeoutMs: 300,
  });

  it('makes a second gateway wait for the same wrong password in flight, then refuse it as known-bad', async () => {
    const server = await (redis ??= startRedis());
    const redisSettings = settingsFor(server.url);
    const [la, lb] = [new Lockout(SETTINGS), new Lockout({ ...SETTINGS, waitMs: 3000 })];
    const [a, b] = [la, lb].map((l) => new RedisBus(l, { redis: redisSettings, instances: 2, log: silent })) as [
      RedisBus,
      RedisBus,
    ];
    try {
      await Promise.all([a.whenUp(), b.whenUp()]);
      const held = await a.reserve('cn=alice', '203.0.113.5', 'same');
      expect(held.verdict).toBe('open');
      let settled = false;
      const second = b.reserve('cn=alice', '203.0.113.5', 'same').finally(() => {
        settled = true;
      });
      await new Promise((r) => setTimeout(r, 150));
      expect(settled).toBe(false); // not bound twice at once
      la.connect(a);
      la.failure('cn=alice', '203.0.113.5', 'same'); // recorded, then released (authenticate.ts)
      held.release();
      expect((await second).verdict).toBe('open');
      expect(lb.knownBad('cn=alice', 'same')).toBe(true); // so authenticate refuses it without a bind
    } finally {
      a.close();
      b.close();
    }
  });

  it('with Redis unreachable, reserves against max(1, floor(threshold / instances)) and caps slots alone', async () => {
    const lockout = new Lockout({ ...SETTINGS, waitMs: 200 }); // threshold 3, 2 instances: 1
    const bus = new RedisBus(lockout, { redis: settingsFor('redis://127.0.0.1:1'), instances: 2, log: silent });
    try {
      const first = await bus.reserve('cn=alice', '203.0.113.5', 'p0');
      expect(first.verdict).toBe('open');
      expect((await bus.reserve('cn=alice', '203.0.113.5', 'p1')).verdict).toBe('busy'); // waits on p0, alone
      const [one, two] = [await bus.acquireSlot('k', 1), await bus.acquireSlot('k', 1)];
      expect(one).not.toBeNull();
      expect(two).toBeNull();
    } finally {
      bus.close();
    }
  });
});
