// Unit tests for the gateway's smart lockout (src/lockout.ts) with an injected clock: familiar and
// unfamiliar sources counted apart, repeats of one wrong password counted once, a sliding window,
// success resetting its own class, per-address spraying limits, and bounded state.
import { describe, expect, it } from 'vitest';
import { Lockout, type LockoutSettings, type LockoutVerdict } from '../../src/lockout.js';

const SETTINGS: LockoutSettings = { threshold: 3, windowSeconds: 60, sourceAccounts: 5, sourceFailures: 20, familiarSeconds: 60, max: 100 };
const WINDOW = SETTINGS.windowSeconds * 1000;

const ALICE = 'cn=alice,cn=users,dc=lab,dc=test';
const BOB = 'cn=bob,cn=users,dc=lab,dc=test';
const HOME = '198.51.100.7';      // alice signed in from here: familiar
const ATTACKER = '203.0.113.5';   // never succeeded: unfamiliar
const ELSEWHERE = '203.0.113.99'; // another unfamiliar address

/** A Lockout on a clock the test moves by hand. */
function setup(settings: Partial<LockoutSettings> = {}) {
  const clock = { t: 1_700_000_000_000 };
  const lockout = new Lockout({ ...SETTINGS, ...settings }, () => clock.t);
  const advance = (ms: number) => { clock.t += ms; };
  /** `n` failures with distinct passwords p<from>…p<from+n-1>. */
  const fail = (account: string | null, source: string, n: number, from = 0) => {
    for (let i = from; i < from + n; i++) lockout.failure(account, source, `p${i}`);
  };
  return { lockout, advance, fail };
}

describe('Lockout: unfamiliar sources', () => {
  it.each<[distinct: number, verdict: LockoutVerdict]>([
    [0, 'open'],
    [1, 'open'],
    [2, 'open'],
    [3, 'account-locked'],
    [7, 'account-locked'],
  ])('%i distinct wrong passwords → %s', (distinct, verdict) => {
    const { lockout, fail } = setup();
    fail(ALICE, ATTACKER, distinct);
    expect(lockout.check(ALICE, ATTACKER)).toBe(verdict);
  });

  it('locks the whole unfamiliar class, not only the address that failed', () => {
    const { lockout, fail } = setup();
    fail(ALICE, ATTACKER, 3);
    expect(lockout.check(ALICE, ELSEWHERE)).toBe('account-locked');
  });

  it('locks only the account that failed', () => {
    const { lockout, fail } = setup();
    fail(ALICE, ATTACKER, 3);
    expect(lockout.check(BOB, ATTACKER)).toBe('open');
  });

  it('counts a repeated wrong password once (a phone with an old password)', () => {
    const { lockout } = setup();
    for (let i = 0; i < 10; i++) lockout.failure(ALICE, ATTACKER, 'old-password');
    expect(lockout.check(ALICE, ATTACKER)).toBe('open');
    lockout.failure(ALICE, ATTACKER, 'guess-1');
    expect(lockout.check(ALICE, ATTACKER)).toBe('open');
    lockout.failure(ALICE, ATTACKER, 'guess-2');
    expect(lockout.check(ALICE, ATTACKER)).toBe('account-locked');
  });
});

describe('Lockout: familiar and unfamiliar sources are counted apart', () => {
  it('keeps a familiar source open while the unfamiliar class is locked', () => {
    const { lockout, fail } = setup();
    lockout.success(ALICE, HOME);
    fail(ALICE, ATTACKER, 10);
    expect(lockout.check(ALICE, ATTACKER)).toBe('account-locked');
    expect(lockout.check(ALICE, HOME)).toBe('open');
  });

  it('keeps unfamiliar sources open while the familiar class is locked', () => {
    const { lockout, fail } = setup();
    lockout.success(ALICE, HOME);
    fail(ALICE, HOME, 3);
    expect(lockout.check(ALICE, HOME)).toBe('account-locked');
    expect(lockout.check(ALICE, ATTACKER)).toBe('open');
  });

  it('does not add failures of one class to the other', () => {
    const { lockout, fail } = setup();
    lockout.success(ALICE, HOME);
    fail(ALICE, HOME, 2);
    fail(ALICE, ATTACKER, 2, 2);
    expect(lockout.check(ALICE, HOME)).toBe('open');
    expect(lockout.check(ALICE, ATTACKER)).toBe('open');
  });

  it('treats a source as familiar only for a window after its last success', () => {
    const { lockout, fail, advance } = setup();
    lockout.success(ALICE, HOME);
    fail(ALICE, ATTACKER, 3);
    advance(WINDOW - 1);
    fail(ALICE, ATTACKER, 3, 10);           // keep the unfamiliar class locked
    expect(lockout.check(ALICE, HOME)).toBe('open');
    advance(1);                             // HOME's success is a window old now
    expect(lockout.check(ALICE, HOME)).toBe('account-locked');
  });
});

describe('Lockout: sliding window', () => {
  it('ages failures out one by one, windowSeconds after each', () => {
    const { lockout, fail, advance } = setup();
    fail(ALICE, ATTACKER, 1, 0);            // t = 0
    advance(20_000);
    fail(ALICE, ATTACKER, 1, 1);            // t = 20 s
    advance(20_000);
    fail(ALICE, ATTACKER, 1, 2);            // t = 40 s
    expect(lockout.check(ALICE, ATTACKER)).toBe('account-locked');
    advance(WINDOW - 40_000 - 1);           // t = 60 s − 1 ms: all three still inside
    expect(lockout.check(ALICE, ATTACKER)).toBe('account-locked');
    advance(1);                             // t = 60 s: the first has aged out
    expect(lockout.check(ALICE, ATTACKER)).toBe('open');
    fail(ALICE, ATTACKER, 1, 3);            // one more new one locks again
    expect(lockout.check(ALICE, ATTACKER)).toBe('account-locked');
    advance(WINDOW);
    expect(lockout.check(ALICE, ATTACKER)).toBe('open');
  });

  it('dates a repeated wrong password from its latest repeat', () => {
    const { lockout, fail, advance } = setup();
    fail(ALICE, ATTACKER, 3);
    advance(WINDOW - 1_000);
    lockout.failure(ALICE, ATTACKER, 'p0'); // the same password again, just before it ages out
    advance(1_000);
    // p1, p2 aged out; p0 was seen again within the window: one failure left.
    fail(ALICE, ATTACKER, 1, 5);
    expect(lockout.check(ALICE, ATTACKER)).toBe('open');
    fail(ALICE, ATTACKER, 1, 6);
    expect(lockout.check(ALICE, ATTACKER)).toBe('account-locked');
  });
});

describe('Lockout: success', () => {
  it('from an unfamiliar source clears the unfamiliar failures', () => {
    const { lockout, fail } = setup();
    fail(ALICE, ATTACKER, 2);
    lockout.success(ALICE, ELSEWHERE);      // the user, from a new place
    fail(ALICE, ATTACKER, 2, 10);
    expect(lockout.check(ALICE, ATTACKER)).toBe('open');
    fail(ALICE, ATTACKER, 1, 20);
    expect(lockout.check(ALICE, ATTACKER)).toBe('account-locked');
  });

  it('from an unfamiliar source leaves the familiar failures alone', () => {
    const { lockout, fail } = setup();
    lockout.success(ALICE, HOME);
    fail(ALICE, HOME, 2);
    lockout.success(ALICE, ELSEWHERE);      // unfamiliar until now: clears that class only
    fail(ALICE, HOME, 1, 10);
    expect(lockout.check(ALICE, HOME)).toBe('account-locked');
  });

  it('from a familiar source clears the familiar failures and leaves the unfamiliar ones', () => {
    const { lockout, fail } = setup();
    lockout.success(ALICE, HOME);
    fail(ALICE, HOME, 2);
    fail(ALICE, ATTACKER, 3, 10);
    lockout.success(ALICE, HOME);
    fail(ALICE, HOME, 2, 20);
    expect(lockout.check(ALICE, HOME)).toBe('open');
    expect(lockout.check(ALICE, ATTACKER)).toBe('account-locked');
  });

  it('makes the source familiar', () => {
    const { lockout, fail } = setup();
    fail(ALICE, ATTACKER, 3);
    lockout.success(ALICE, ELSEWHERE);
    fail(ALICE, ATTACKER, 3, 10);
    expect(lockout.check(ALICE, ELSEWHERE)).toBe('open');
    expect(lockout.check(ALICE, ATTACKER)).toBe('account-locked');
  });
});

describe('Lockout: per-address limits (password spraying)', () => {
  const accounts = (n: number) => Array.from({ length: n }, (_, i) => `cn=user${i},cn=users,dc=lab,dc=test`);

  it.each<[accounts: number, verdict: LockoutVerdict]>([
    [4, 'open'],
    [5, 'source-blocked'],
    [9, 'source-blocked'],
  ])('one wrong password each for %i accounts → %s', (n, verdict) => {
    const { lockout } = setup();
    for (const a of accounts(n)) lockout.failure(a, ATTACKER, 'Spring2025!');
    expect(lockout.check(null, ATTACKER)).toBe(verdict);
  });

  it('blocks a spraying address for every account, also ones it never tried and unknown names', () => {
    const { lockout } = setup();
    for (const a of accounts(5)) lockout.failure(a, ATTACKER, 'Spring2025!');
    expect(lockout.check(ALICE, ATTACKER)).toBe('source-blocked');
    expect(lockout.check(null, ATTACKER)).toBe('source-blocked');
    expect(lockout.check(ALICE, ELSEWHERE)).toBe('open');
    expect(lockout.check(null, ELSEWHERE)).toBe('open');
  });

  it('blocks even a familiar source of the account once the address sprays', () => {
    const { lockout } = setup();
    lockout.success(ALICE, ATTACKER);
    for (const a of accounts(5)) lockout.failure(a, ATTACKER, 'Spring2025!');
    expect(lockout.check(ALICE, ATTACKER)).toBe('source-blocked');
  });

  it('counts failures for names that matched no account (account null) as distinct accounts', () => {
    const { lockout } = setup();
    // authenticate passes HMAC(name, password) as the fingerprint; these stand in for five names.
    for (let i = 0; i < 4; i++) lockout.failure(null, ATTACKER, `${i}`.repeat(64));
    expect(lockout.check(null, ATTACKER)).toBe('open');
    lockout.failure(null, ATTACKER, 'f'.repeat(64));
    expect(lockout.check(null, ATTACKER)).toBe('source-blocked');
    expect(lockout.check(ALICE, ATTACKER)).toBe('source-blocked');
  });

  it('mixes known and unknown names in one count', () => {
    const { lockout } = setup();
    for (const a of accounts(3)) lockout.failure(a, ATTACKER, 'x');
    lockout.failure(null, ATTACKER, 'a'.repeat(64));
    expect(lockout.check(null, ATTACKER)).toBe('open');
    lockout.failure(null, ATTACKER, 'b'.repeat(64));
    expect(lockout.check(null, ATTACKER)).toBe('source-blocked');
  });

  it('blocks at sourceFailures failures in total, even for few accounts', () => {
    const { lockout } = setup({ sourceFailures: 8, threshold: 100 });
    for (let i = 0; i < 7; i++) lockout.failure(i % 2 ? ALICE : BOB, ATTACKER, `p${i}`);
    expect(lockout.check(null, ATTACKER)).toBe('open');
    lockout.failure(ALICE, ATTACKER, 'p7');
    expect(lockout.check(null, ATTACKER)).toBe('source-blocked');
    expect(lockout.check(null, ELSEWHERE)).toBe('open');
  });

  it('lets the address in again once its failures age out', () => {
    const { lockout, advance } = setup();
    for (const a of accounts(5)) lockout.failure(a, ATTACKER, 'Spring2025!');
    advance(WINDOW - 1);
    expect(lockout.check(null, ATTACKER)).toBe('source-blocked');
    advance(1);
    expect(lockout.check(null, ATTACKER)).toBe('open');
  });

  it('ages the total out too (sliding)', () => {
    const { lockout, advance } = setup({ sourceFailures: 4, threshold: 100 });
    lockout.failure(ALICE, ATTACKER, 'p0');
    advance(30_000);
    for (let i = 1; i < 4; i++) lockout.failure(ALICE, ATTACKER, `p${i}`);
    expect(lockout.check(null, ATTACKER)).toBe('source-blocked');
    advance(30_000);                        // p0 is a window old
    expect(lockout.check(null, ATTACKER)).toBe('open');
  });
});

describe('Lockout: bounded state', () => {
  it('tracks at most `max` accounts, forgetting the least recently used', () => {
    const { lockout, fail } = setup({ max: 2, sourceAccounts: 100, sourceFailures: 100 });
    const [a, b, c] = ['cn=a', 'cn=b', 'cn=c'];
    fail(a, ATTACKER, 3);
    fail(b, ATTACKER, 3);
    fail(c, ATTACKER, 3);
    expect(lockout.check(a, ATTACKER)).toBe('open');          // evicted
    expect(lockout.check(b, ATTACKER)).toBe('account-locked');
    expect(lockout.check(c, ATTACKER)).toBe('account-locked');
  });

  it('tracks at most `max` addresses', () => {
    const { lockout } = setup({ max: 2, sourceAccounts: 1 });
    const [x, y, z] = ['192.0.2.1', '192.0.2.2', '192.0.2.3'];
    for (const s of [x, y, z]) lockout.failure(ALICE, s, 'p');
    expect(lockout.check(null, x)).toBe('open');               // evicted
    expect(lockout.check(null, y)).toBe('source-blocked');
    expect(lockout.check(null, z)).toBe('source-blocked');
  });
});
