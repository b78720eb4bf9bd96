/**
 * The lockout's attempts in flight: binds reserved and not yet settled, counted as if they were
 * failures, and the attempts waiting for them to settle (Lockout.acquire). Only the authority of
 * the state bus (the primary, or the only process) holds reservations. And the time-stamped maps.
 */

export interface LockoutSettings {
  /** Failed binds per account and source class before that class is refused. */
  readonly threshold: number;
  /** A class's count resets after this long without a failure (AD's observation window). */
  readonly windowSeconds: number;
  /** Distinct accounts (or unknown names) failing from one address within the window → 429. */
  readonly sourceAccounts: number;
  /** Distinct failed (account, password) pairs from one address within the window → 429. */
  readonly sourceFailures: number;
  /** How long a successful sign-in keeps an address familiar for that account. */
  readonly familiarSeconds: number;
  /** Accounts and addresses tracked at most. */
  readonly max: number;
  /** Attempts of one account that may wait for a reservation at once (more: 'busy'). Default 32. */
  readonly maxWaiting?: number;
  /** How long an attempt waits for a reservation before it is 'busy'. Default 10000. */
  readonly waitMs?: number;
}

/** 'busy': the attempt waited its bound for attempts in flight to settle (503, try again). */
export type LockoutVerdict = 'open' | 'account-locked' | 'source-blocked' | 'busy';

/** An attempt allowed on to the directory; settle it with release() once it is answered. */
export interface Attempt {
  readonly verdict: LockoutVerdict;
  release(): void;
}

/** Time-stamped keys. */
export type Seen = Map<string, number>;

export interface SourceState {
  readonly accounts: Seen;
  readonly failures: Seen;
}

export class InFlight {
  /** Class key (lockout.ts classKey) → wrong passwords in flight. */
  readonly #byClass = new Map<string, Seen>();
  /** Source key → accounts and (account, password) pairs in flight. */
  readonly #bySource = new Map<string, SourceState>();
  /** Attempts waiting, by `a\0account` and `s\0source`: woken when one settles. */
  readonly #waiters = new Map<string, Set<() => void>>();

  /** Counts one attempt until the returned release (callers record a failure first, then release). */
  add(cls: string, src: string, account: string, fingerprint: string, t: number): () => void {
    const byClass = getOr(this.#byClass, cls, () => new Map());
    const bySource = getOr(this.#bySource, src, () => ({ accounts: new Map(), failures: new Map() }));
    const pair = `${account}\0${fingerprint}`;
    const added = [!byClass.has(fingerprint), !bySource.accounts.has(account), !bySource.failures.has(pair)];
    byClass.set(fingerprint, t);
    bySource.accounts.set(account, t);
    bySource.failures.set(pair, t);
    return () => {
      if (added[0]) byClass.delete(fingerprint);
      if (added[1]) bySource.accounts.delete(account);
      if (added[2]) bySource.failures.delete(pair);
      if (byClass.size === 0) this.#byClass.delete(cls);
      if (bySource.accounts.size === 0 && bySource.failures.size === 0) this.#bySource.delete(src);
      this.wake(account, src);
    };
  }

  /**
   * Would this attempt stay within `threshold` were every attempt of its class in flight to fail?
   * One whose wrong password is already counted or in flight adds nothing, and has room.
   */
  classRoom(cls: string, settled: ReadonlyMap<string, number>, fingerprint: string, threshold: number): boolean {
    const pending = this.#byClass.get(cls);
    if (settled.has(fingerprint) || pending?.has(fingerprint)) return true;
    return union(settled, pending, -Infinity) + 1 <= threshold;
  }

  /** The same for the per-address limits (`settled`: the address's failures since `since`). */
  sourceRoom(
    src: string,
    settled: SourceState | undefined,
    account: string,
    since: number,
    limits: { readonly sourceAccounts: number; readonly sourceFailures: number },
  ): boolean {
    const pending = this.#bySource.get(src);
    if (!pending) return true;
    const accounts = union(settled?.accounts, pending.accounts, since) + (pending.accounts.has(account) ? 0 : 1);
    const failures = union(settled?.failures, pending.failures, since) + 1;
    return accounts <= limits.sourceAccounts && failures <= limits.sourceFailures;
  }

  /**
   * Runs `admit` until it no longer says 'wait', woken each time an attempt of the account or the
   * address settles; then `reserve`. Beyond `maxWaiting` waiting attempts of one account, or after
   * `waitMs`: 'busy'.
   */
  async acquire(
    account: string,
    src: string,
    limits: { readonly waitMs?: number; readonly maxWaiting?: number },
    admit: () => LockoutVerdict | 'wait',
    reserve: () => Attempt,
  ): Promise<Attempt> {
    const deadline = Date.now() + (limits.waitMs ?? 10_000);
    for (;;) {
      const verdict = admit();
      if (verdict !== 'wait') return verdict === 'open' ? reserve() : { verdict, release: () => {} };
      const left = deadline - Date.now();
      const waiting = this.#waiters.get(`a\0${account}`)?.size ?? 0;
      if (left <= 0 || waiting >= (limits.maxWaiting ?? 32)) return { verdict: 'busy', release: () => {} };
      await this.settled(account, src, left);
    }
  }

  /** Resolves when an attempt in flight for this account or source settles, or after `ms`. */
  private settled(account: string, src: string, ms: number): Promise<void> {
    const keys = [`a\0${account}`, `s\0${src}`];
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        for (const k of keys) {
          const set = this.#waiters.get(k);
          set?.delete(wake);
          if (set?.size === 0) this.#waiters.delete(k);
        }
        resolve();
      };
      const timer = setTimeout(wake, ms);
      for (const k of keys) getOr(this.#waiters, k, () => new Set()).add(wake);
    });
  }

  private wake(account: string, src: string): void {
    for (const k of [`a\0${account}`, `s\0${src}`]) {
      const set = this.#waiters.get(k);
      if (set) for (const w of [...set]) w();
    }
  }
}

/** Distinct keys seen after `since` in either map. */
export function union(
  a: ReadonlyMap<string, number> | undefined,
  b: ReadonlyMap<string, number> | undefined,
  since: number,
): number {
  let n = 0;
  if (a) for (const t of a.values()) if (t > since) n++;
  if (b) for (const [k, t] of b) if (t > since && !((a?.get(k) ?? -Infinity) > since)) n++;
  return n;
}

export function prune(map: Seen, since: number): void {
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
