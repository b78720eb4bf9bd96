// Unit tests for the decision caches (src/auth/decision-cache.ts) with an injected clock: credential
// keys (HMAC under a per-process secret), freshness and the stale-if-error window, bounds, TTL 0,
// what the auth and standing caches hold (Verified {account, verifiedAt}; passwordSetAt), and
// coalescing of concurrent identical lookups.
import { describe, expect, it } from 'vitest';
import { DecisionCache, type CacheSettings, type Standing, type Verified } from '../../src/auth/decision-cache.js';
import type { Account } from '../../src/directory/directory.js';

const SETTINGS: CacheSettings = {
  max: 100,
  authTtlSeconds: 300,
  groupTtlSeconds: 60,
  negativeTtlSeconds: 30,
  staleIfErrorSeconds: 120,
};

function setup(settings: Partial<CacheSettings> = {}) {
  const clock = { t: 1_700_000_000_000 };
  const cache = new DecisionCache({ ...SETTINGS, ...settings }, () => clock.t);
  return {
    cache,
    advance: (ms: number) => {
      clock.t += ms;
    },
  };
}

const standing = (...groups: string[]): Standing => ({ refusal: null, passwordSetAt: null, groups: new Set(groups) });
const ACCOUNT: Account = { dn: 'CN=alice', sam: 'alice', user: 'LAB\\alice', upn: null, mail: null };

/** A promise with its resolve and reject outside. */
function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

describe('DecisionCache.credentialKey', () => {
  const { cache } = setup();

  it('is 64 hex digits (HMAC-SHA-256)', () => {
    expect(cache.credentialKey('cn=alice,cn=users,dc=lab,dc=test', 'Secret-1')).toMatch(/^[0-9a-f]{64}$/);
  });

  it('contains neither the user nor the password, in clear or hex', () => {
    const user = 'alice';
    const password = 'Winter2025';
    const key = cache.credentialKey(user, password);
    for (const s of [user, password, Buffer.from(user).toString('hex'), Buffer.from(password).toString('hex')]) {
      expect(key).not.toContain(s.toLowerCase());
    }
  });

  it('is stable within one process', () => {
    expect(cache.credentialKey('alice', 'x')).toBe(cache.credentialKey('alice', 'x'));
  });

  it('differs between two instances (a per-process secret, not a plain hash)', () => {
    const other = setup().cache;
    expect(other.credentialKey('alice', 'x')).not.toBe(cache.credentialKey('alice', 'x'));
  });

  it.each<[what: string, a: [string, string], b: [string, string]]>([
    ['another password', ['alice', 'x'], ['alice', 'y']],
    ['another user', ['alice', 'x'], ['bob', 'x']],
    ['user and password swapped', ['alice', 'bob'], ['bob', 'alice']],
    ['a colon moved between user and password', ['a:b', 'c'], ['a', 'b:c']],
    ['case of the password', ['alice', 'Secret'], ['alice', 'secret']],
    ['the boundary between user and password moved', ['alice', ''], ['alic', 'e']],
  ])('differs for %s', (_what, a, b) => {
    expect(cache.credentialKey(...a)).not.toBe(cache.credentialKey(...b));
  });
  it('differs when a NUL moves between user and password', () => {
    expect(cache.credentialKey('a\0b', 'c')).not.toBe(cache.credentialKey('a', 'b\0c'));
  });
});

describe('FreshCache: freshness and the stale window', () => {
  // groupTtlSeconds 60, staleIfErrorSeconds 120 → fresh for 60 s, usable when the DC is down for
  // 120 s more.
  it.each<[at: number, fresh: boolean, stale: boolean]>([
    [0, true, true],
    [59_999, true, true],
    [60_000, false, true],
    [179_999, false, true],
  ])('an entry %i ms old: fresh %s, stale %s', (at, fresh, stale) => {
    const { cache, advance } = setup();
    const value = standing('cn=g');
    cache.standing.set('k', value);
    advance(at);
    expect(cache.standing.fresh('k')).toBe(fresh ? value : undefined);
    expect(cache.standing.stale('k')).toBe(stale ? value : undefined);
  });
  it('forgets an entry once the stale window has passed (injected clock)', () => {
    const { cache, advance } = setup();
    cache.standing.set('k', standing());
    advance(180_000);
    expect(cache.standing.stale('k')).toBeUndefined();
  });

  it('with staleIfErrorSeconds 0 has no stale life past the TTL (injected clock)', () => {
    const { cache, advance } = setup({ staleIfErrorSeconds: 0 });
    cache.standing.set('k', standing());
    advance(60_000);
    expect(cache.standing.fresh('k')).toBeUndefined();
    expect(cache.standing.stale('k')).toBeUndefined();
  });

  it('gives each cache its own TTL', () => {
    const { cache, advance } = setup();
    const account = ACCOUNT;
    const verified: Verified = { account, verifiedAt: 1_700_000_000_000 };
    cache.auth.set('k', verified);
    cache.negative.set('k', { reason: 'bad-credentials' });
    cache.accounts.set('k', { account });
    advance(30_000); // negativeTtlSeconds
    expect(cache.negative.fresh('k')).toBeUndefined();
    expect(cache.accounts.fresh('k')).toEqual({ account });
    advance(30_000); // groupTtlSeconds
    expect(cache.accounts.fresh('k')).toBeUndefined();
    expect(cache.auth.fresh('k')).toBe(verified);
    advance(240_000); // authTtlSeconds
    expect(cache.auth.fresh('k')).toBeUndefined();
  });

  it('restarts freshness when an entry is set again', () => {
    const { cache, advance } = setup();
    cache.standing.set('k', standing('cn=old'));
    advance(50_000);
    const renewed = standing('cn=new');
    cache.standing.set('k', renewed);
    advance(50_000);
    expect(cache.standing.fresh('k')).toBe(renewed);
  });

  it('forgets a deleted entry, fresh and stale', () => {
    const { cache } = setup();
    cache.standing.set('k', standing());
    cache.standing.delete('k');
    expect(cache.standing.fresh('k')).toBeUndefined();
    expect(cache.standing.stale('k')).toBeUndefined();
    expect(cache.standing.size).toBe(0);
  });

  it('keeps what a verified password was checked for, and when (the auth cache)', () => {
    const { cache, advance } = setup();
    cache.auth.set('k', { account: ACCOUNT, verifiedAt: 1_700_000_000_000 });
    advance(301_000); // past authTtlSeconds, within the stale window
    expect(cache.auth.fresh('k')).toBeUndefined();
    expect(cache.auth.stale('k')).toEqual({ account: ACCOUNT, verifiedAt: 1_700_000_000_000 });
  });

  it('keeps an account standing with its refusal and passwordSetAt', () => {
    const { cache } = setup();
    const value: Standing = {
      refusal: 'password-expired',
      passwordSetAt: 1_600_000_000_000,
      groups: new Set(['cn=g']),
    };
    cache.standing.set('k', value);
    expect(cache.standing.fresh('k')).toEqual({
      refusal: 'password-expired',
      passwordSetAt: 1_600_000_000_000,
      groups: new Set(['cn=g']),
    });
  });

  it('keeps the negative cache out of the stale window (a wrong password is never served stale)', () => {
    const { cache, advance } = setup({ staleIfErrorSeconds: 600 });
    cache.negative.set('k', { reason: 'bad-credentials' });
    advance(30_000);
    expect(cache.negative.stale('k')).toBeUndefined();
  });

  it('holds at most `max` entries, evicting the least recently used', () => {
    const { cache } = setup({ max: 2 });
    cache.standing.set('a', standing());
    cache.standing.set('b', standing());
    cache.standing.fresh('a'); // a is now more recent than b
    cache.standing.set('c', standing());
    expect(cache.standing.size).toBe(2);
    expect(cache.standing.fresh('a')).toBeDefined();
    expect(cache.standing.fresh('b')).toBeUndefined();
    expect(cache.standing.fresh('c')).toBeDefined();
  });

  it.each<[setting: keyof CacheSettings, cache: 'auth' | 'negative' | 'standing']>([
    ['authTtlSeconds', 'auth'],
    ['negativeTtlSeconds', 'negative'],
    ['groupTtlSeconds', 'standing'],
  ])('%s 0 disables the %s cache, stale window included', (setting, name) => {
    const { cache } = setup({ [setting]: 0, staleIfErrorSeconds: 600 });
    const c = cache[name] as {
      set(k: string, v: object): void;
      fresh(k: string): unknown;
      stale(k: string): unknown;
      size: number;
    };
    c.set('k', { reason: 'bad-credentials' });
    expect(c.fresh('k')).toBeUndefined();
    expect(c.stale('k')).toBeUndefined();
    expect(c.size).toBe(0);
  });
});

describe('DecisionCache.coalesce', () => {
  it('runs the function once for concurrent callers, and all get its result', async () => {
    const { cache } = setup();
    const gate = deferred<string>();
    let runs = 0;
    const fn = () => {
      runs++;
      return gate.promise;
    };
    const callers = Array.from({ length: 20 }, () => cache.coalesce('k', fn));
    expect(runs).toBe(1);
    gate.resolve('answer');
    expect(await Promise.all(callers)).toEqual(Array(20).fill('answer'));
    expect(runs).toBe(1);
  });

  it('runs the function again once the first call has settled', async () => {
    const { cache } = setup();
    let runs = 0;
    const fn = async () => ++runs;
    expect(await cache.coalesce('k', fn)).toBe(1);
    expect(await cache.coalesce('k', fn)).toBe(2);
  });

  it('hands a rejection to every concurrent caller, then runs again', async () => {
    const { cache } = setup();
    const gate = deferred<number>();
    let runs = 0;
    const callers = [1, 2, 3].map(() =>
      cache.coalesce('k', () => {
        runs++;
        return gate.promise;
      }),
    );
    gate.reject(new Error('DC down'));
    for (const c of callers) await expect(c).rejects.toThrow('DC down');
    expect(runs).toBe(1);
    expect(
      await cache.coalesce('k', async () => {
        runs++;
        return 7;
      }),
    ).toBe(7);
    expect(runs).toBe(2);
  });

  it('keeps different keys apart', async () => {
    const { cache } = setup();
    let runs = 0;
    const [a, b] = await Promise.all([
      cache.coalesce('a', async () => {
        runs++;
        return 'A';
      }),
      cache.coalesce('b', async () => {
        runs++;
        return 'B';
      }),
    ]);
    expect([a, b, runs]).toEqual(['A', 'B', 2]);
  });

  it('a caller arriving after the function settled starts a new run', async () => {
    const { cache } = setup();
    const first = deferred<string>();
    const second = deferred<string>();
    const gates = [first, second];
    let runs = 0;
    const fn = () => (gates[runs++] as (typeof gates)[number]).promise;
    const early = cache.coalesce('k', fn);
    first.resolve('old');
    await early;
    const late = cache.coalesce('k', fn);
    second.resolve('new');
    expect(await late).toBe('new');
    expect(runs).toBe(2);
  });
});
