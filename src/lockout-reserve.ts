/**
 * The lockout's attempts in flight: binds reserved and not yet settled, counted as if they were
 * failures, and the attempts waiting for them to settle (Lockout.acquire). Only the authority of
 * the state bus (the primary, or the only process) holds reservations.
 */

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

  ofClass(cls: string): ReadonlyMap<string, number> | undefined {
    return this.#byClass.get(cls);
  }

  ofSource(src: string): SourceState | undefined {
    return this.#bySource.get(src);
  }

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

  /** How many attempts of this account wait now. */
  waiting(account: string): number {
    return this.#waiters.get(`a\0${account}`)?.size ?? 0;
  }

  /** Resolves when an attempt in flight for this account or source settles, or after `ms`. */
  settled(account: string, src: string, ms: number): Promise<void> {
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

export function getOr<K, V>(map: Map<K, V>, key: K, make: () => V): V {
  let v = map.get(key);
  if (v === undefined) {
    v = make();
    map.set(key, v);
  }
  return v;
}
