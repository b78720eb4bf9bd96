/**
 * Smart lockout at the gateway, before AD ever sees an attempt (the AD FS Extranet Smart Lockout
 * and Entra smart lockout pattern):
 *
 * - Failures are counted per account and per source class: *familiar* sources (addresses this
 *   account signed in from successfully within the window) and *unfamiliar* ones (all others),
 *   apart. An attacker spraying from the internet fills the unfamiliar counter only, so the user
 *   keeps working from a known place.
 * - A repeat of the same wrong password counts once (a phone with an old password).
 * - At `threshold` distinct wrong passwords in `windowSeconds`, that class is locked: attempts
 *   from it are refused (401 `gateway-lockout`) without any LDAP bind, right password or not,
 *   until failures age out of the window. Set threshold so that 2 × threshold stays below AD's
 *   lockout threshold: then the gateway can never lock the account in AD.
 * - Per source address, failures across many accounts (password spraying) are limited too;
 *   past the limit the address gets 429 for every account.
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
  /** Failures from one address within the window before it gets 429. */
  readonly sourceFailures: number;
  /** Accounts and addresses tracked at most. */
  readonly max: number;
}

export type LockoutVerdict = 'open' | 'account-locked' | 'source-blocked';

interface AccountState {
  /** Wrong-password fingerprint → last time, per class. */
  readonly familiarFailures: Map<string, number>;
  readonly unfamiliarFailures: Map<string, number>;
  /** Address → last successful sign-in. */
  readonly familiarSources: Map<string, number>;
}

interface SourceState {
  /** Account key → last failure. */
  readonly accounts: Map<string, number>;
  failures: number[];
}

/** The lockout bookkeeping of one gateway process (see issue 5 for several workers). */
export class Lockout {
  readonly #accounts: LRUCache<string, AccountState>;
  readonly #sources: LRUCache<string, SourceState>;
  readonly #windowMs: number;

  constructor(private readonly settings: LockoutSettings, private readonly now: () => number = Date.now) {
    this.#windowMs = settings.windowSeconds * 1000;
    this.#accounts = new LRUCache({ max: settings.max, ttl: this.#windowMs, updateAgeOnGet: false });
    this.#sources = new LRUCache({ max: settings.max, ttl: this.#windowMs });
  }

  /** May this source try this account now? `account` null: the name matched no account. */
  check(account: string | null, source: string): LockoutVerdict {
    const since = this.now() - this.#windowMs;
    const src = this.#sources.get(source);
    if (src && (recent(src.accounts, since) >= this.settings.sourceAccounts || src.failures.filter((t) => t > since).length >= this.settings.sourceFailures)) {
      return 'source-blocked';
    }
    if (account === null) return 'open';
    const state = this.#accounts.get(account);
    if (!state) return 'open';
    const failures = this.isFamiliar(state, source, since) ? state.familiarFailures : state.unfamiliarFailures;
    return recent(failures, since) >= this.settings.threshold ? 'account-locked' : 'open';
  }

  /** A wrong password. `fingerprint` identifies the password (an HMAC), so repeats count once. */
  failure(account: string | null, source: string, fingerprint: string): void {
    const t = this.now();
    const since = t - this.#windowMs;
    const src = this.#sources.get(source) ?? { accounts: new Map<string, number>(), failures: [] };
    src.accounts.set(account ?? `?${fingerprint.slice(0, 8)}`, t);
    src.failures = [...src.failures.filter((x) => x > since), t];
    this.#sources.set(source, src);
    if (account === null) return;
    const state = this.state(account);
    const failures = this.isFamiliar(state, source, since) ? state.familiarFailures : state.unfamiliarFailures;
    failures.set(fingerprint, t);
    prune(failures, since);
    this.#accounts.set(account, state);
  }

  /** A successful sign-in: the source becomes familiar and its class starts over (as AD resets badPwdCount). */
  success(account: string, source: string): void {
    const t = this.now();
    const state = this.state(account);
    const wasFamiliar = this.isFamiliar(state, source, t - this.#windowMs);
    (wasFamiliar ? state.familiarFailures : state.unfamiliarFailures).clear();
    state.familiarSources.set(source, t);
    prune(state.familiarSources, t - this.#windowMs);
    this.#accounts.set(account, state);
  }

  private state(account: string): AccountState {
    return this.#accounts.get(account) ?? { familiarFailures: new Map(), unfamiliarFailures: new Map(), familiarSources: new Map() };
  }

  private isFamiliar(state: AccountState, source: string, since: number): boolean {
    const last = state.familiarSources.get(source);
    return last !== undefined && last > since;
  }
}

function recent(map: ReadonlyMap<string, number>, since: number): number {
  let n = 0;
  for (const t of map.values()) if (t > since) n++;
  return n;
}

function prune(map: Map<string, number>, since: number): void {
  for (const [k, t] of map) if (t <= since) map.delete(k);
}
