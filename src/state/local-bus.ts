/**
 * The authority of a state bus (Hub) and its in-process members (LocalBus). One process: the
 * gateway's own Lockout is the authority and the only member. With workers, the primary runs a Hub
 * whose members are the workers (ipc-primary.ts). What a member holds is released when it leaves.
 */
import type { Attempt } from '../auth/lockout.js';
import type { Authority, BusEvent, SessionRecord, Slot, StateBus } from './bus.js';
import { mergeSession } from './sessions.js';

/** How a member is told what the others published (a batch: a replay, or one event). */
export type Deliver = (events: readonly BusEvent[]) => void;

export interface HubOptions {
  /** Events kept for members that join later, at most (each also until its `until`). Default 0. */
  readonly retainMax?: number;
  readonly now?: () => number;
}

/** Places counted per key; each holder's places go back when it leaves. */
export class Slots {
  readonly #counts = new Map<string, number>();

  /** A place for `key` if fewer than `cap` are held, else null; decided synchronously (atomic). */
  take(key: string, cap: number, held?: Set<Slot>): Slot | null {
    const n = this.#counts.get(key) ?? 0;
    if (n >= cap) return null;
    this.#counts.set(key, n + 1);
    let done = false;
    const slot: Slot = {
      release: () => {
        if (done) return;
        done = true;
        held?.delete(slot);
        const left = (this.#counts.get(key) ?? 1) - 1;
        if (left <= 0) this.#counts.delete(key);
        else this.#counts.set(key, left);
      },
    };
    held?.add(slot);
    return slot;
  }
}

export class Hub {
  readonly #members = new Set<LocalBus>();
  readonly #slots = new Slots();
  /** Retained events, oldest first, from index #head (a queue without O(n) shifts). */
  #retained: BusEvent[] = [];
  #head = 0;
  /** Sessions kept for members that join later: one merged record each, not every use. */
  readonly #sessions = new Map<string, { session: SessionRecord; until: number }>();
  readonly #retainMax: number;
  readonly #now: () => number;

  /** `authority`: the Lockout that reserves for every member and hears every event. */
  constructor(
    readonly authority: Authority,
    opts: HubOptions = {},
  ) {
    this.#retainMax = opts.retainMax ?? 0;
    this.#now = opts.now ?? Date.now;
  }

  /**
   * A new member; `deliver` is told at once what is retained. `owner`: the member whose Lockout is the
   * authority itself (one process), so its own events and settings are not applied twice.
   */
  join(deliver: Deliver = () => {}, opts: { owner?: boolean } = {}): LocalBus {
    const member = new LocalBus(this, deliver, opts.owner === true);
    this.#members.add(member);
    const kept = this.retained();
    if (kept.length > 0) deliver(kept); // its subscribers hear them as they subscribe
    return member;
  }

  /** Events still kept for members that join later. */
  retained(): BusEvent[] {
    const now = this.#now();
    const events = this.#retained.slice(this.#head).filter((e) => e.kind !== 'lockout' || e.until > now);
    for (const [key, s] of this.#sessions) {
      if (s.until > now) events.push({ kind: 'session', ...s });
      else this.#sessions.delete(key);
    }
    return events;
  }

  /** @internal by LocalBus */
  publish(from: LocalBus, event: BusEvent): void {
    if (!from.owner) {
      if (event.kind === 'lockout') this.authority.apply(event.event);
      else if (event.kind === 'settings') this.authority.reconfigure(event.settings);
    }
    if (event.kind === 'lockout') this.retain(event);
    else if (event.kind === 'session') this.retainSession(event.session, event.until);
    for (const m of this.#members) if (m !== from) m.deliver([event]);
  }

  /** @internal by LocalBus: the authority's acquire, held for the member until release or leave. */
  async reserve(from: LocalBus, account: string, source: string, fingerprint: string): Promise<Attempt> {
    const attempt = await this.authority.acquire(account, source, fingerprint);
    if (attempt.verdict !== 'open') return attempt;
    if (!this.#members.has(from)) {
      // it left while the attempt waited
      attempt.release();
      return { verdict: attempt.verdict, release: () => {} };
    }
    let done = false;
    const held: Slot = {
      release: () => {
        if (!done) {
          done = true;
          from.held.delete(held);
          attempt.release();
        }
      },
    };
    from.held.add(held);
    return { verdict: attempt.verdict, release: held.release };
  }

  /** @internal by LocalBus */
  acquireSlot(from: LocalBus, key: string, cap: number): Slot | null {
    return this.#members.has(from) ? this.#slots.take(key, cap, from.held) : null;
  }

  /** @internal by LocalBus */
  leave(member: LocalBus): void {
    this.#members.delete(member);
    for (const h of [...member.held]) h.release();
  }

  private retainSession(session: SessionRecord, until: number): void {
    if (this.#retainMax === 0) return;
    const known = this.#sessions.get(session.key);
    this.#sessions.set(session.key, { session: known ? mergeSession(known.session, session) : session, until });
    if (known || this.#sessions.size <= this.#retainMax) return;
    const oldest = this.#sessions.keys().next();
    if (!oldest.done) this.#sessions.delete(oldest.value);
  }

  private retain(event: BusEvent): void {
    if (this.#retainMax === 0) return;
    this.#retained.push(event);
    const now = this.#now();
    while (this.#head < this.#retained.length) {
      const first = this.#retained[this.#head] as BusEvent;
      const expired = first.kind === 'lockout' && first.until <= now;
      if (!expired && this.#retained.length - this.#head <= this.#retainMax) break;
      this.#head++;
    }
    if (this.#head > 1024 && this.#head * 2 > this.#retained.length) {
      this.#retained = this.#retained.slice(this.#head);
      this.#head = 0;
    }
  }
}

/** A member of a Hub in the same process. */
export class LocalBus implements StateBus {
  readonly #handlers = new Set<(event: BusEvent) => void>();
  /** Reservations and slots this member holds: released when it leaves. */
  readonly held = new Set<Slot>();

  constructor(
    private readonly hub: Hub,
    private readonly onDeliver: Deliver,
    readonly owner: boolean,
  ) {}

  publish(event: BusEvent): void {
    this.hub.publish(this, event);
  }

  subscribe(handler: (event: BusEvent) => void): () => void {
    for (const e of this.hub.retained()) handler(e);
    this.#handlers.add(handler);
    return () => this.#handlers.delete(handler);
  }

  reserve(account: string, source: string, fingerprint: string): Promise<Attempt> {
    return this.hub.reserve(this, account, source, fingerprint);
  }

  async acquireSlot(key: string, cap: number): Promise<Slot | null> {
    return this.hub.acquireSlot(this, key, cap);
  }

  close(): void {
    this.hub.leave(this);
  }

  /** @internal by Hub */
  deliver(events: readonly BusEvent[]): void {
    this.onDeliver(events);
    for (const e of events) for (const h of this.#handlers) h(e);
  }
}

/** The bus of a gateway that runs as one process: its own Lockout is the authority. */
export function localBus(lockout: Authority): StateBus {
  return new Hub(lockout).join(() => {}, { owner: true });
}
