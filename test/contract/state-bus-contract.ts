/**
 * The StateBus contract (STYLE.md §13, §16): one suite, run unchanged against every implementation
 * (in-process members of a Hub; workers over IPC to a primary). The authority is a real Lockout;
 * every expectation is about what the members and the authority see, never about a transport.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Lockout, LockoutSettings } from '../../src/auth/lockout.js';
import type { BusEvent, StateBus } from '../../src/state/bus.js';
import { Sessions } from '../../src/state/sessions.js';

export const SETTINGS: LockoutSettings = {
  threshold: 3,
  windowSeconds: 600,
  sourceAccounts: 1000,
  sourceFailures: 100_000,
  familiarSeconds: 600,
  max: 1000,
  waitMs: 400,
};

/** Members of one bus around one authority. */
export interface BusCluster {
  /** The Lockout that reserves for every member and hears every event. */
  readonly authority: Lockout;
  /** A new member (joining after what was published so far). */
  join(): Promise<StateBus>;
  /** Ends a member abruptly (a process: killed), as a crashed worker ends. */
  kill(member: StateBus): Promise<void>;
  close(): Promise<void>;
}

export type MakeCluster = (settings: LockoutSettings) => Promise<BusCluster>;

const ALICE = 'cn=alice,cn=users,dc=lab,dc=test';
const ATTACKER = '203.0.113.5';
let uniq = 0;

/** What a member heard, for the assertions. */
function heard(bus: StateBus): BusEvent[] {
  const got: BusEvent[] = [];
  bus.subscribe((e) => got.push(e));
  return got;
}

function failure(account: string, fingerprint: string, t = Date.now()): BusEvent {
  return { kind: 'lockout', event: { kind: 'failure', account, source: ATTACKER, fingerprint, t }, until: t + 600_000 };
}

/** A success verified by a bind: it resets the account's counts. */
function success(account: string, t = Date.now()): BusEvent {
  const event = { kind: 'success', account, source: ATTACKER, verifiedByBind: true, name: null, t } as const;
  return { kind: 'lockout', event, until: t + 600_000 };
}

async function until(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const fingerprints = (events: BusEvent[]) =>
  events.map((e) => (e.kind === 'lockout' && e.event.kind === 'failure' ? e.event.fingerprint : e.kind));

export function runStateBusContract(name: string, make: MakeCluster): void {
  describe(`StateBus contract: ${name}`, () => {
    let cluster: BusCluster | null = null;
    const start = async (settings: Partial<LockoutSettings> = {}) =>
      (cluster = await make({ ...SETTINGS, ...settings }));
    afterEach(async () => {
      await cluster?.close();
      cluster = null;
    });

    it('delivers a publish to every other member and the authority, never back to the publisher', async () => {
      const c = await start();
      const [a, b, d] = [await c.join(), await c.join(), await c.join()];
      const [fromA, fromB, fromD] = [heard(a), heard(b), heard(d)];
      const account = `cn=user${++uniq}`;
      for (const p of ['p1', 'p2', 'p3']) a.publish(failure(account, p));
      await until(() => fromB.length === 3 && fromD.length === 3, 'b and d hear all three');
      expect(fingerprints(fromB)).toEqual(['p1', 'p2', 'p3']); // in order
      await until(() => c.authority.check(account, ATTACKER) === 'account-locked', 'the authority applies them');
      await new Promise((r) => setTimeout(r, 100));
      expect(fromA).toEqual([]);
    });

    it('tells a member that joins later the events still kept, and not the expired ones', async () => {
      const c = await start();
      const a = await c.join();
      const account = `cn=user${++uniq}`;
      a.publish(failure(account, 'old', Date.now() - 700_000)); // kept until 100 s ago: expired
      a.publish(failure(account, 'kept'));
      await until(() => c.authority.knownBad(account, 'kept'), 'the authority applies it');
      const late = heard(await c.join());
      await until(() => late.length >= 1, 'the late member hears the kept event');
      await new Promise((r) => setTimeout(r, 100));
      expect(fingerprints(late)).toEqual(['kept']);
    });

    it('carries browser sessions: made on one member, valid on another and on a late one; ended on any, ended on all', async () => {
      const c = await start();
      const [a, b] = [await c.join(), await c.join()];
      const settings = { idleMinutes: 10, maxHours: 1, max: 100 };
      const [onA, onB] = [new Sessions(a, settings), new Sessions(b, settings)];
      const account = { dn: `CN=User ${++uniq},DC=lab`, sam: 'u', user: 'LAB\\u', upn: null, mail: null };
      const id = onA.start(account, 'owa');
      await until(() => onB.find(id) !== null, 'b knows the session');
      const onLate = new Sessions(await c.join(), settings);
      await until(() => onLate.find(id) !== null, 'a member that joins later knows it');
      onLate.endId(id);
      await until(() => onA.find(id) === null && onB.find(id) === null, 'ended on every member');
      const onLater = new Sessions(await c.join(), settings);
      await new Promise((r) => setTimeout(r, 100));
      expect(onLater.find(id)).toBeNull(); // an ended session is told as ended to later members too
    });

    it('reserves atomically: a burst of wrong passwords from three members opens at most threshold', async () => {
      const c = await start();
      const members = [await c.join(), await c.join(), await c.join()];
      const attempts = await Promise.all(
        Array.from({ length: 12 }, (_, i) => (members[i % 3] as StateBus).reserve(ALICE, ATTACKER, `burst-${i}`)),
      );
      const verdicts = attempts.map((x) => x.verdict);
      expect(verdicts.filter((v) => v === 'open')).toHaveLength(SETTINGS.threshold);
      expect(verdicts.filter((v) => v !== 'open').every((v) => v === 'busy')).toBe(true);
      for (const x of attempts) x.release();
    });

    it.each([
      ['the attempts in flight fail', 'account-locked'],
      ['one of them succeeds (a bind resets the count)', 'open'],
    ] as const)('wakes a waiting reservation when %s: %s', async (_what, verdict) => {
      const c = await start({ waitMs: 5000 });
      const [a, b] = [await c.join(), await c.join()];
      const account = `cn=user${++uniq}`;
      const held = await Promise.all(['p0', 'p1', 'p2'].map((p) => a.reserve(account, ATTACKER, p)));
      expect(held.map((x) => x.verdict)).toEqual(['open', 'open', 'open']);
      const started = Date.now();
      let settled = false;
      const waiting = b.reserve(account, ATTACKER, 'p3').then((x) => {
        settled = true;
        return x;
      });
      await new Promise((r) => setTimeout(r, 150));
      expect(settled).toBe(false); // it waits behind the three
      if (verdict === 'account-locked') for (const p of ['p0', 'p1', 'p2']) a.publish(failure(account, p));
      else a.publish(success(account));
      for (const x of held) x.release(); // recorded first, then released (authenticate.ts)
      const got = await waiting;
      expect(got.verdict).toBe(verdict);
      expect(Date.now() - started).toBeLessThan(2500); // woken, not timed out
      got.release();
    });

    it('releases the reservations of a member that dies: the attempts waiting behind them go on', async () => {
      const c = await start({ waitMs: 5000 });
      const [a, b] = [await c.join(), await c.join()];
      const account = `cn=user${++uniq}`;
      for (const p of ['p0', 'p1', 'p2']) expect((await a.reserve(account, ATTACKER, p)).verdict).toBe('open');
      const waiting = b.reserve(account, ATTACKER, 'p3');
      await new Promise((r) => setTimeout(r, 100));
      await c.kill(a);
      expect((await waiting).verdict).toBe('open');
    });

    it('caps slots across members, and frees one on release and when its holder dies', async () => {
      const c = await start();
      const [a, b, d] = [await c.join(), await c.join(), await c.join()];
      const key = `tunnel\0${++uniq}`;
      const first = await a.acquireSlot(key, 2);
      const second = await b.acquireSlot(key, 2);
      expect(first).not.toBeNull();
      expect(second).not.toBeNull();
      expect(await d.acquireSlot(key, 2)).toBeNull();
      expect(await a.acquireSlot(`${key}-other`, 2)).not.toBeNull(); // per key
      first!.release();
      first!.release(); // once only
      const third = await waitForSlot(d, key, 2);
      expect(await a.acquireSlot(key, 2)).toBeNull();
      await c.kill(b); // b held one
      const fourth = await waitForSlot(a, key, 2);
      expect(third).not.toBeNull();
      expect(fourth).not.toBeNull();
      expect(await d.acquireSlot(key, 2)).toBeNull();
    });

    it('brings the settings one member publishes to the authority, whose reservations use them', async () => {
      const c = await start();
      const [a, b] = [await c.join(), await c.join()];
      const account = `cn=user${++uniq}`;
      for (const p of ['p0', 'p1', 'p2']) a.publish(failure(account, p));
      await until(() => c.authority.check(account, ATTACKER) === 'account-locked', 'locked at 3');
      a.publish({ kind: 'settings', settings: { ...SETTINGS, threshold: 10 } });
      await until(() => c.authority.settings.threshold === 10, 'the authority has the new threshold');
      expect((await b.reserve(account, ATTACKER, 'p3')).verdict).toBe('open');
    });
  });
}

/** Retries until a slot frees (a release or a death reaches the authority asynchronously). */
async function waitForSlot(bus: StateBus, key: string, cap: number): Promise<{ release(): void } | null> {
  const end = Date.now() + 3000;
  for (;;) {
    const slot = await bus.acquireSlot(key, cap);
    if (slot || Date.now() > end) return slot;
    await new Promise((r) => setTimeout(r, 20));
  }
}
