// Browser sessions over the state bus (src/state/sessions.ts): made on one member, valid on all; ended on
// one, ended on all; idle and absolute limits; bounded. Real Hub and members, a settable clock.
import { describe, expect, it } from 'vitest';
import { Lockout } from '../../src/auth/lockout.js';
import { Hub } from '../../src/state/local-bus.js';
import {
  EXPIRED_SESSION_COOKIE,
  mergeSession,
  sessionCookie,
  sessionIdOf,
  Sessions,
  withoutSessionCookie,
} from '../../src/state/sessions.js';
import type { SessionRecord } from '../../src/state/bus.js';

const ALICE = {
  dn: 'CN=Alice Anders,CN=Users,DC=lab,DC=test',
  sam: 'alice',
  user: 'LAB\\alice',
  upn: null,
  mail: null,
};
const SETTINGS = { idleMinutes: 10, maxHours: 1, max: 100 };
const MIN = 60_000;

function cluster(n: number, settings = SETTINGS) {
  const clock = { t: 1_000_000 };
  const now = () => clock.t;
  const hub = new Hub(new Lockout(LOCKOUT, now), { retainMax: 1000, now });
  const members = Array.from({ length: n }, () => new Sessions(hub.join(), settings, now));
  return { clock, hub, members, join: () => new Sessions(hub.join(), settings, now) };
}
const LOCKOUT = {
  threshold: 5,
  windowSeconds: 1800,
  sourceAccounts: 10,
  sourceFailures: 50,
  familiarSeconds: 1000,
  max: 1000,
  maxWaiting: 32,
  waitMs: 10_000,
};

describe('Sessions', () => {
  it('a session made on one member is valid on the others, and one ended on any is ended on all', () => {
    const { members } = cluster(3);
    const [a, b, c] = members as [Sessions, Sessions, Sessions];
    const id = a.start(ALICE, 'owa');
    expect(id).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(b.find(id)?.account.user).toBe('LAB\\alice');
    expect(c.find(id)?.service).toBe('owa');
    c.end(c.find(id)!);
    expect(a.find(id)).toBeNull();
    expect(b.find(id)).toBeNull();
    expect(c.find(id)).toBeNull();
  });

  it('gives a new unguessable ID at every sign-in and knows none it did not make', () => {
    const { members } = cluster(1);
    const s = members[0]!;
    const ids = new Set(Array.from({ length: 200 }, () => s.start(ALICE, 'owa')));
    expect(ids.size).toBe(200);
    expect(s.find('A'.repeat(43))).toBeNull(); // forged, well shaped
    expect(s.find('short')).toBeNull();
    expect(s.find(null)).toBeNull();
    expect(s.find(`${[...ids][0]}x`)).toBeNull();
  });

  it('ends a session idle for idleMinutes, even when another member saw it used less often', () => {
    const { clock, members } = cluster(2);
    const [a, b] = members as [Sessions, Sessions];
    const id = a.start(ALICE, 'owa');
    for (let i = 0; i < 5; i++) {
      clock.t += 5 * MIN; // used on a every 5 minutes: b hears of it (touches are told every minute at most)
      expect(a.find(id)).not.toBeNull();
    }
    clock.t += 9 * MIN;
    expect(b.find(id)).not.toBeNull(); // 9 minutes after the last use on a
    clock.t += 10 * MIN + 1;
    expect(a.find(id)).toBeNull();
    expect(b.find(id)).toBeNull();
  });

  it('ends a session maxHours after sign-in, used or not', () => {
    const { clock, members } = cluster(1);
    const s = members[0]!;
    const id = s.start(ALICE, 'ecp');
    for (let t = 0; t < 60; t += 5) {
      clock.t += 5 * MIN;
      if (t < 55) expect(s.find(id)).not.toBeNull();
    }
    clock.t += 1;
    expect(s.find(id)).toBeNull();
  });

  it('a member that joins later hears the live sessions and the ended ones', () => {
    const { members, join } = cluster(1);
    const a = members[0]!;
    const live = a.start(ALICE, 'owa');
    const ended = a.start(ALICE, 'owa');
    a.endId(ended);
    const late = join();
    expect(late.find(live)).not.toBeNull();
    expect(late.find(ended)).toBeNull();
  });

  it('the hub keeps one record per session, not every use', () => {
    const { clock, hub, members } = cluster(1);
    const a = members[0]!;
    const id = a.start(ALICE, 'owa');
    for (let i = 0; i < 50; i++) {
      clock.t += MIN;
      a.find(id);
    }
    expect(hub.retained().filter((e) => e.kind === 'session')).toHaveLength(1);
  });

  it('holds at most max sessions, the oldest going first', () => {
    const { members } = cluster(1, { ...SETTINGS, max: 10 });
    const s = members[0]!;
    const ids = Array.from({ length: 25 }, () => s.start(ALICE, 'owa'));
    expect(s.live()).toBe(10);
    expect(s.find(ids[0]!)).toBeNull();
    expect(s.find(ids[24]!)).not.toBeNull();
  });

  it('an ended record wins whatever order the records arrive in', () => {
    const base: SessionRecord = {
      key: 'k',
      account: ALICE,
      service: 'owa',
      createdAt: 1,
      lastSeenAt: 5,
      endedAt: null,
    };
    const used = { ...base, lastSeenAt: 9 };
    const ended = { ...base, endedAt: 7 };
    for (const [x, y] of [
      [used, ended],
      [ended, used],
    ] as const) {
      expect(mergeSession(x, y)).toMatchObject({ lastSeenAt: 9, endedAt: 7 });
    }
  });
});

describe('the session cookie', () => {
  it.each([
    [['a=1; exgate-session=abc; b=2'], 'abc'],
    [['exgate-session=one', 'exgate-session=two'], 'two'],
    [['a=1', 'b=2'], null],
    [['xexgate-session=abc'], null],
    [[], null],
  ])('%j → %s', (lines, id) => {
    expect(sessionIdOf(lines)).toBe(id);
  });

  it.each([
    ['a=1; exgate-session=abc; b=2', 'a=1; b=2'],
    ['exgate-session=abc', null],
    ['cadata=x;exgate-session=abc', 'cadata=x'],
    ['X-OWA-CANARY=c; cadata=d', 'X-OWA-CANARY=c; cadata=d'],
    ['xexgate-session=1', 'xexgate-session=1'],
  ])('%s never reaches Exchange: %s', (line, kept) => {
    expect(withoutSessionCookie(line)).toBe(kept);
  });

  it('is Secure, HttpOnly and SameSite=Lax, for the whole site', () => {
    const cookie = sessionCookie('x'.repeat(43), SETTINGS);
    expect(cookie).toMatch(/; Path=\/;/);
    for (const flag of ['Secure', 'HttpOnly', 'SameSite=Lax']) expect(cookie).toContain(`; ${flag}`);
    expect(EXPIRED_SESSION_COOKIE).toContain('Max-Age=0');
  });
});
