/**
 * The decision caches: what makes thousands of ActiveSync phones (Basic credentials on every
 * request) cheap for the DC, and what keeps already-signed-in users working through a short DC
 * outage. Every cache is bounded by `max` and a TTL (STYLE.md §12).
 *
 * - Credentials enter a key only as HMAC(process secret, user NUL password): a memory dump
 *   shows no password, and the secret dies with the process.
 * - `auth`: a verified password (→ the account), fresh for `authTtlSeconds`.
 * - `negative`: a wrong password, for `negativeTtlSeconds` (a phone retrying an old password
 *   costs the DC nothing and counts once).
 * - `accounts`: logon name → account, and `groups`: (policy version, account) → account state
 *   and policy-relevant memberships, fresh for `groupTtlSeconds`: a removal from a group, or a
 *   disabled account, takes effect within it. The policy version is part of the key, so a reload
 *   never reuses a decision made under the old policy.
 * - With `staleIfErrorSeconds`, entries are kept that much longer and used only when the
 *   directory is unreachable (logged `cache: stale`).
 * - Concurrent identical lookups share one directory call (`coalesce`).
 */
import { createHmac, randomBytes } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Account, PasswordRefusal } from '../directory/directory.js';

export interface CacheSettings {
  readonly max: number;
  readonly authTtlSeconds: number;
  readonly groupTtlSeconds: number;
  readonly negativeTtlSeconds: number;
  readonly staleIfErrorSeconds: number;
}

/** A cached value with its freshness; past `freshUntil` it may only serve as stale. */
export interface Entry<T> {
  readonly value: T;
  readonly freshUntil: number;
}

/** An account's state and memberships, as of its last refresh. */
export interface Standing {
  /** Why the account cannot sign in now, or null when it can. */
  readonly refusal: PasswordRefusal | null;
  /** When the password was last set (ms), or null: a password verified before it is stale. */
  readonly passwordSetAt: number | null;
  readonly groups: ReadonlySet<string>;
}

/** A verified password: the account it opens, and when it was verified (by a bind). */
export interface Verified {
  readonly account: Account;
  readonly verifiedAt: number;
}

/** One bounded cache whose entries outlive their freshness by the stale window. */
class FreshCache<T extends object> {
  readonly #lru: LRUCache<string, Entry<T>> | null;

  constructor(
    max: number,
    private readonly ttlMs: number,
    private readonly staleMs: number,
    private readonly now: () => number,
  ) {
    this.#lru = ttlMs > 0 ? new LRUCache({ max, ttl: ttlMs + staleMs }) : null;
  }

  /** The entry if it is fresh. */
  fresh(key: string): T | undefined {
    const e = this.#lru?.get(key);
    return e && e.freshUntil > this.now() ? e.value : undefined;
  }

  /** When the entry stops being fresh (ms), or undefined without one. */
  freshUntil(key: string): number | undefined {
    return this.#lru?.get(key)?.freshUntil;
  }

  /** The entry if it is within its stale window (fresh ones too). */
  stale(key: string): T | undefined {
    const e = this.#lru?.get(key);
    return e && e.freshUntil + this.staleMs > this.now() ? e.value : undefined;
  }

  set(key: string, value: T): void {
    this.#lru?.set(key, { value, freshUntil: this.now() + this.ttlMs });
  }

  delete(key: string): void {
    this.#lru?.delete(key);
  }

  get size(): number {
    return this.#lru?.size ?? 0;
  }
}

export class DecisionCache {
  readonly #secret = randomBytes(32);
  readonly #inflight = new Map<string, Promise<unknown>>();
  readonly auth: FreshCache<Verified>;
  readonly negative: FreshCache<{ reason: PasswordRefusal }>;
  readonly accounts: FreshCache<{ account: Account | null }>;
  readonly standing: FreshCache<Standing>;

  constructor(settings: CacheSettings, now: () => number = Date.now) {
    const s = (x: number) => x * 1000;
    const stale = s(settings.staleIfErrorSeconds);
    this.auth = new FreshCache(settings.max, s(settings.authTtlSeconds), stale, now);
    this.negative = new FreshCache(settings.max, s(settings.negativeTtlSeconds), 0, now);
    this.accounts = new FreshCache(settings.max, s(settings.groupTtlSeconds), stale, now);
    this.standing = new FreshCache(settings.max, s(settings.groupTtlSeconds), stale, now);
  }

  /** HMAC(process secret, length-prefixed user, password), hex: the only form credentials take in
   * memory. The length prefix keeps `(a\0b, c)` and `(a, b\0c)` apart. */
  credentialKey(user: string, password: string): string {
    return createHmac('sha256', this.#secret)
      .update(`${Buffer.byteLength(user)}:`)
      .update(user)
      .update('\0')
      .update(password)
      .digest('hex');
  }

  /** Runs `fn` once for concurrent callers with the same key; all get its result. */
  coalesce<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const running = this.#inflight.get(key) as Promise<T> | undefined;
    if (running) return running;
    const p = fn().finally(() => this.#inflight.delete(key));
    this.#inflight.set(key, p);
    return p;
  }
}
