/**
 * Smart lockout at the gateway, before AD ever sees an attempt (the AD FS Extranet Smart Lockout
 * and Entra smart lockout pattern). Its promise: with `2 × threshold` below AD's lockout
 * threshold and `windowSeconds` at least AD's "reset account lockout counter after", the gateway
 * alone can never lock an account in AD. It keeps that promise by modelling AD's badPwdCount:
 *
 * - It counts the failed binds it caused, per account and per source class: *familiar* sources
 *   (addresses this account signed in from within `familiarSeconds`) and *unfamiliar* ones,
 *   apart; an attacker fills only the unfamiliar counter, the user keeps working from home.
 * - A wrong password already seen for the account within the window is refused without a bind
 *   (`knownBad`), so a phone retrying an old password costs AD nothing and counts once.
 * - Like badPwdCount, a counter resets only after `windowSeconds` without a failure (not a
 *   sliding window), and after a success *verified by a bind* (AD resets its count then too; a
 *   success answered from the cache resets nothing).
 * - At `threshold`, attempts from that class are refused (401 `gateway-lockout`) with no bind.
 * - Attempts whose bind is in flight count until settled (`reserve`): a burst cannot slip past.
 *   One that could push a class past `threshold` if every attempt in flight failed waits for
 *   them to settle (`acquire`, bounded), so a user's own overlapping sign-ins are never refused.
 * - Per source address (IPv6 per /64), failures across many accounts (spraying) get the address
 *   429, except for an account that address is familiar to.
 *
 * State is bounded (LRU, `max`), survives a reload (`reconfigure`) and is shared on the state bus
 * (`connect`): members `apply` what the others saw; the bus's authority reserves (lockout-reserve.ts).
 */
import { LRUCache } from 'lru-cache';
import { InFlight, prune, union } from './lockout-reserve.js';
import { sourceKey } from './source-key.js';
import type { Attempt, LockoutSettings, LockoutVerdict, Seen, SourceState } from './lockout-reserve.js';
import type { LockoutEvent, StateBus } from '../state/bus.js';

export type { Attempt, LockoutSettings, LockoutVerdict } from './lockout-reserve.js';
export type { LockoutEvent } from '../state/bus.js';
export { sourceKey } from './source-key.js';

/** One source class of one account: the wrong passwords that caused binds, since the last reset. */
interface Counter {
  readonly failures: Seen;
  last: number;
}

interface AccountState {
  /** The last failure of either class (AD's badPasswordTime: one per account). */
  last: number;
  readonly familiar: Counter;
  readonly unfamiliar: Counter;
  /** Source key → last successful sign-in. */
  readonly sources: Seen;
}

/** How often, at most, a cached sign-in refreshes its source's familiarity (and tells other
 * workers); never less often than a tenth of familiarSeconds. */
const FAMILIAR_REFRESH_MS = 60_000;

export class Lockout {
  #settings: LockoutSettings;
  /** Null until connect(): then failures, successes and settings go out on it, and it reserves. */
  #bus: StateBus | null = null;
  readonly #accounts: LRUCache<string, AccountState>;
  readonly #sources: LRUCache<string, SourceState>;
  /** Logon name (authenticate's account key) → the account DN it signed in as. */
  readonly #names: LRUCache<string, string>;
  readonly #inFlight = new InFlight();

  constructor(
    settings: LockoutSettings,
    private readonly now: () => number = Date.now,
  ) {
    this.#settings = settings;
    this.#accounts = new LRUCache({ max: settings.max });
    this.#sources = new LRUCache({ max: settings.max });
    this.#names = new LRUCache({ max: settings.max });
  }

  /** Is this address familiar to the account this logon name signed in as? */
  familiarName(name: string, source: string): boolean {
    const account = this.#names.get(name);
    return account !== undefined && this.isFamiliar(account, source);
  }

  /** Shares this lockout on `bus`, once (state.ts, with the first state): it survives reloads. */
  connect(bus: StateBus): void {
    this.#bus = bus;
    bus.subscribe((e) => {
      if (e.kind === 'lockout') this.apply(e.event);
    });
  }

  get settings(): LockoutSettings {
    return this.#settings;
  }

  /** New settings, same memory: a reload must not forgive an attacker. */
  reconfigure(settings: LockoutSettings): void {
    this.#settings = settings;
    this.#bus?.publish({ kind: 'settings', settings });
  }

  /** May this source try this account now? `account` null: only the source's limits apply. */
  check(account: string | null, source: string): LockoutVerdict {
    const src = sourceKey(source);
    const familiar = account !== null && this.familiarKey(account, src);
    if (this.sourceBlocked(src) && !familiar) return 'source-blocked';
    if (account === null) return 'open';
    return this.settled(account, familiar).size >= this.#settings.threshold ? 'account-locked' : 'open';
  }

  /** The wrong passwords that count against a class now (none when it is quiet for a window). */
  private settled(account: string, familiar: boolean): ReadonlyMap<string, number> {
    const state = this.#accounts.get(account); // a read: never creates (nor evicts) state
    return state && state.last > this.since() ? (familiar ? state.familiar : state.unfamiliar).failures : EMPTY;
  }

  /** True when this wrong password was already refused for the account since its count last reset. */
  knownBad(account: string, fingerprint: string): boolean {
    const state = this.#accounts.get(account);
    if (!state) return false;
    const since = this.since();
    return state.last > since && [state.familiar, state.unfamiliar].some((c) => c.failures.has(fingerprint));
  }

  /** acquire(), by the bus's authority once connected (the primary, with workers), else here. */
  async reserveShared(account: string, source: string, fingerprint: string): Promise<Attempt> {
    const local = this.check(account, source);
    if (local !== 'open') return { verdict: local, release: () => {} };
    return this.#bus ? this.#bus.reserve(account, source, fingerprint) : this.acquire(account, source, fingerprint);
  }

  /**
   * reserve(), waiting while the attempt could only pass `threshold` if every attempt in flight
   * failed: a success (or a failure) settles them, and it is judged again. Beyond `maxWaiting`
   * waiting attempts of one account, or after `waitMs`: 'busy'.
   */
  acquire(account: string, source: string, fingerprint: string): Promise<Attempt> {
    return this.#inFlight.acquire(
      account,
      sourceKey(source),
      this.#settings,
      () => this.admit(account, source, fingerprint),
      () => this.reserve(account, source, fingerprint),
    );
  }

  /**
   * Whether an attempt may reserve now: refused by what has settled, 'wait' when only the
   * attempts in flight stand in the way (were they all to fail, this one would pass a limit).
   * An attempt whose wrong password is already counted or in flight adds nothing, and passes.
   */
  private admit(account: string, source: string, fingerprint: string): LockoutVerdict | 'wait' {
    const verdict = this.check(account, source);
    if (verdict !== 'open') return verdict;
    const src = sourceKey(source);
    const familiar = this.familiarKey(account, src);
    const cls = classKey(account, familiar);
    if (!this.#inFlight.classRoom(cls, this.settled(account, familiar), fingerprint, this.#settings.threshold))
      return 'wait';
    const room =
      familiar || this.#inFlight.sourceRoom(src, this.#sources.get(src), account, this.since(), this.#settings);
    return room ? 'open' : 'wait';
  }

  /** Counts the attempt as a failure until release() (check() must have said 'open'). */
  reserve(account: string, source: string, fingerprint: string): Attempt {
    const verdict = this.check(account, source);
    if (verdict !== 'open') return { verdict, release: () => {} };
    const src = sourceKey(source);
    const release = this.#inFlight.add(
      classKey(account, this.familiarKey(account, src)),
      src,
      account,
      fingerprint,
      this.now(),
    );
    return { verdict, release };
  }

  /**
   * A failed bind (a wrong password). `account` null: the name matched no account; then
   * `fingerprint` should name the name, so one made-up name counts once.
   */
  failure(account: string | null, source: string, fingerprint: string): void {
    const t = this.now();
    this.applyFailure(account, source, fingerprint, t);
    this.share({ kind: 'failure', account, source, fingerprint, t });
  }

  private applyFailure(account: string | null, source: string, fingerprint: string, t: number): void {
    const src = sourceKey(source);
    const key = account ?? `?${fingerprint}`;
    const s = this.#sources.get(src) ?? { accounts: new Map(), failures: new Map() };
    s.accounts.set(key, t);
    s.failures.set(`${key}\0${fingerprint}`, t);
    prune(s.accounts, this.since());
    prune(s.failures, this.since());
    this.#sources.set(src, s);
    if (account === null) return;
    const counter = this.counter(account, this.familiarKey(account, src));
    counter.failures.set(fingerprint, t);
    counter.last = t;
    this.state(account).last = t;
  }

  /**
   * A successful sign-in: the source becomes familiar. Only a success checked by a bind resets
   * the counts, as only a real logon resets AD's badPwdCount.
   */
  success(account: string, source: string, verifiedByBind: boolean, name?: string): void {
    const t = this.now();
    // A cached sign-in from a source already familiar (refreshed within the last minute) changes
    // nothing worth recording, nor telling the other workers: the common case, kept cheap.
    if (!verifiedByBind) {
      const last = this.#accounts.get(account)?.sources.get(sourceKey(source));
      const refresh = Math.min(FAMILIAR_REFRESH_MS, (this.#settings.familiarSeconds * 1000) / 10);
      if (last !== undefined && t - last < refresh && (name === undefined || this.#names.get(name) === account)) return;
    }
    this.applySuccess(account, source, verifiedByBind, name ?? null, t);
    this.share({ kind: 'success', account, source, verifiedByBind, name: name ?? null, t });
  }

  /** Tells the other members; kept for those that join later while it can still count. */
  private share(event: LockoutEvent): void {
    const keep = Math.max(this.#settings.windowSeconds, this.#settings.familiarSeconds) * 1000;
    this.#bus?.publish({ kind: 'lockout', event, until: event.t + keep });
  }

  /** Applies what another member of the state bus saw (a failure or success, at the time it happened). */
  apply(e: LockoutEvent): void {
    if (e.kind === 'failure') this.applyFailure(e.account, e.source, e.fingerprint, e.t);
    else this.applySuccess(e.account, e.source, e.verifiedByBind, e.name, e.t);
  }

  private applySuccess(account: string, source: string, verifiedByBind: boolean, name: string | null, t: number): void {
    if (name !== null) this.#names.set(name, account);
    const state = this.state(account);
    state.sources.set(sourceKey(source), t);
    prune(state.sources, this.now() - this.#settings.familiarSeconds * 1000);
    if (verifiedByBind) {
      state.familiar.failures.clear();
      state.unfamiliar.failures.clear();
    }
  }

  /** Is this address familiar to this account? */
  isFamiliar(account: string, source: string): boolean {
    return this.familiarKey(account, sourceKey(source));
  }

  private familiarKey(account: string, src: string): boolean {
    const last = this.#accounts.get(account)?.sources.get(src);
    return last !== undefined && last > this.now() - this.#settings.familiarSeconds * 1000;
  }

  /** Refused by what has settled; attempts in flight make others wait (admit), never refuse them. */
  private sourceBlocked(src: string): boolean {
    const s = this.#sources.get(src);
    if (s === undefined) return false;
    const since = this.since();
    return (
      union(s.accounts, undefined, since) >= this.#settings.sourceAccounts ||
      union(s.failures, undefined, since) >= this.#settings.sourceFailures
    );
  }

  private counter(account: string, familiar: boolean): Counter {
    const state = this.state(account);
    if (state.last <= this.since()) {
      // the account quiet for a whole window: reset, as AD does
      state.familiar.failures.clear();
      state.unfamiliar.failures.clear();
    }
    return familiar ? state.familiar : state.unfamiliar;
  }

  private state(account: string): AccountState {
    let s = this.#accounts.get(account);
    if (!s) {
      s = {
        last: 0,
        familiar: { failures: new Map(), last: 0 },
        unfamiliar: { failures: new Map(), last: 0 },
        sources: new Map(),
      };
      this.#accounts.set(account, s);
    }
    return s;
  }

  private since(): number {
    return this.now() - this.#settings.windowSeconds * 1000;
  }
}

function classKey(account: string, familiar: boolean): string {
  return `${familiar ? 'f' : 'u'}\0${account}`;
}

const EMPTY: ReadonlyMap<string, number> = new Map();
