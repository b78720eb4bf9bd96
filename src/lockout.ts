/**
 * Smart lockout at the gateway, before AD ever sees an attempt (the AD FS Extranet Smart Lockout
 * and Entra smart lockout pattern):
 *
 * - Failures are counted per account and per source class: *familiar* sources (addresses this
 *   account signed in from successfully within `familiarSeconds`) and *unfamiliar* ones (all
 *   others), apart. An attacker spraying from the internet fills the unfamiliar counter only, so
 *   the user keeps working from a known place.
 * - A repeat of the same wrong password counts once (a phone with an old password).
 * - At `threshold` distinct wrong passwords in `windowSeconds`, that class is locked: attempts
 *   from it are refused (401 `gateway-lockout`) without any LDAP bind, right password or not,
 *   until failures age out of the window. With 2 × threshold below AD's lockout threshold the
 *   gateway can never lock the account in AD.
 * - Per source address, failures across many accounts (password spraying) are limited too;
 *   past the limit the address gets 429 for every account.
 * - Attempts whose bind is still in flight count as failures until they are settled
 *   (`reserve`): ten wrong passwords sent at once cannot slip past a threshold of three.
 *
 * All state is bounded (LRU with max and TTL) and keyed by account DN, so `alice`,
 * `LAB\alice` and `alice@lab.test` share one counter.
 */
import { LRUCache } from 'lru-cache';

export interface LockoutSettings {
  /** Distinct wrong passwords per account and source class within the window. */
  readonly threshold: number;
  readonly windowSeconds: number;
  /** Distinct accounts with failures from one address within the window before it gets 429. */
  readonly sourceAccounts: number;
  /** Distinct failed (account, password) pairs from one address within the window before it gets 429. */
  readonly sourceFailures: number;
  /** How long a successful sign-in keeps an address familiar for that account. */
  readonly familiarSeconds: number;
  /** Accounts and addresses tracked at most. */
  readonly max: number;
}

export type LockoutVerdict = 'open' | 'account-locked' | 'source-blocked';

/** Time-stamped keys: distinct items seen within a window. */
type Seen = Map<string, number>;

interface AccountState {
  /** Wrong-password fingerprint → last time, per class. */
  readonly familiarFailures: Seen;
  readonly unfamiliarFailures: Seen;
  /** Address → last successful sign-in. */
  readonly familiarSources: Seen;
}

interface SourceState {
  /** Account key → last failure. */
  readonly accounts: Seen;
  /** `account NUL fingerprint` → last failure: distinct failed attempts. */
  readonly failures: Seen;
}

/** An attempt allowed to go on to the directory; settle it with release() once it is answered. */
export interface Attempt {
  readonly verdict: LockoutVerdict;
  release(): void;
}

/** The lockout bookkeeping of one gateway process. */
export class Lockout {
  readonly #accounts: LRUCache<string, AccountState>;
  readonly #sources: LRUCache<string, SourceState>;
  readonly #windowMs: number;
  readonly #familiarMs: number;
  /** Attempts in flight, as if they had failed: per account class, and per source. */
  readonly #pending = new Map<string, Seen>();
  readonly #pendingSources = new Map<string, SourceState>();

  constructor(private readonly settings: LockoutSettings, private readonly now: () => number = Date.now) {
    this.#windowMs = settings.windowSeconds * 1000;
    this.#familiarMs = Math.max(settings.familiarSeconds * 1000, this.#windowMs);
    this.#accounts = new LRUCache({ max: settings.max, ttl: this.#familiarMs });
    this.#sources = new LRUCache({ max: settings.max, ttl: this.#windowMs });
  }

  /** May this source try this account now? `account` null: the name matched no account. */
  check(account: string | null, source: string): LockoutVerdict {
    const since = this.now() - this.#windowMs;
    const src = this.#sources.get(source);
    const pending = this.#pendingSources.get(source);
    if (union(src?.accounts, pending?.accounts, since) >= this.settings.sourceAccounts ||
        union(src?.failures, pending?.failures, since) >= this.settings.sourceFailures) {
      return 'source-blocked';
    }
    if (account === null) return 'open';
    const state = this.#accounts.get(account);
    const familiar = state !== undefined && this.isFamiliar(state, source);
    const failures = state && (familiar ? state.familiarFailures : state.unfamiliarFailures);
    return union(failures, this.#pending.get(classKey(account, familiar)), since) >= this.settings.threshold ? 'account-locked' : 'open';
  }

  /** check(); when open, the attempt counts as a failure until release(). */
  reserve(account: string, source: string, fingerprint: string): Attempt {
    const verdict = this.check(account, source);
    if (verdict !== 'open') return { verdict, release: () => {} };
    const state = this.#accounts.get(account);
    const cls = classKey(account, state !== undefined && this.isFamiliar(state, source));
    const t = this.now();
    const byClass = getOr(this.#pending, cls, () => new Map());
    const bySource = getOr(this.#pendingSources, source, () => ({ accounts: new Map(), failures: new Map() }));
    const pair = `${account}\0${fingerprint}`;
    const added = [!byClass.has(fingerprint), !bySource.accounts.has(account), !bySource.failures.has(pair)];
    byClass.set(fingerprint, t);
    bySource.accounts.set(account, t);
    bySource.failures.set(pair, t);
    return {
      verdict,
      release: () => {
        if (added[0]) byClass.delete(fingerprint);
        if (added[1]) bySource.accounts.delete(account);
        if (added[2]) bySource.failures.delete(pair);
        if (byClass.size === 0) this.#pending.delete(cls);
        if (bySource.accounts.size === 0 && bySource.failures.size === 0) this.#pendingSources.delete(source);
      },
    };
  }

  /** A wrong password. `fingerprint` identifies the password (an HMAC), so repeats count once. */
  failure(account: string | null, source: string, fingerprint: string): void {
    const t = this.now();
    const since = t - this.#windowMs;
    const key = account ?? `?${fingerprint.slice(0, 16)}`;
    const src = this.#sources.get(source) ?? { accounts: new Map(), failures: new Map() };
    src.accounts.set(key, t);
    src.failures.set(`${key}\0${fingerprint}`, t);
    prune(src.accounts, since);
    prune(src.failures, since);
    this.#sources.set(source, src);
    if (account === null) return;
    const state = this.state(account);
    const failures = this.isFamiliar(state, source) ? state.familiarFailures : state.unfamiliarFailures;
    failures.set(fingerprint, t);
    prune(failures, since);
    this.#accounts.set(account, state);
  }

  /** A successful sign-in: the source becomes familiar and its class starts over (as AD resets badPwdCount). */
  success(account: string, source: string): void {
    const t = this.now();
    const state = this.state(account);
    (this.isFamiliar(state, source) ? state.familiarFailures : state.unfamiliarFailures).clear();
    state.familiarSources.set(source, t);
    prune(state.familiarSources, t - this.#familiarMs);
    this.#accounts.set(account, state);
  }

  private state(account: string): AccountState {
    return this.#accounts.get(account) ?? { familiarFailures: new Map(), unfamiliarFailures: new Map(), familiarSources: new Map() };
  }

  private isFamiliar(state: AccountState, source: string): boolean {
    const last = state.familiarSources.get(source);
    return last !== undefined && last > this.now() - this.#familiarMs;
  }
}

function classKey(account: string, familiar: boolean): string {
  return `${familiar ? 'f' : 'u'}\0${account}`;
}

/** Distinct keys seen after `since` in either map. */
function union(a: Seen | undefined, b: Seen | undefined, since: number): number {
  let n = 0;
  if (a) for (const t of a.values()) if (t > since) n++;
  if (b) for (const [k, t] of b) if (t > since && !((a?.get(k) ?? 0) > since)) n++;
  return n;
}

function prune(map: Seen, since: number): void {
  for (const [k, t] of map) if (t <= since) map.delete(k);
}

function getOr<K, V>(map: Map<K, V>, key: K, make: () => V): V {
  let v = map.get(key);
  if (v === undefined) {
    v = make();
    map.set(key, v);
  }
  return v;
}
