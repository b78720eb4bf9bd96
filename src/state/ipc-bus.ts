/**
 * The state bus of a worker: every call goes to the primary over the IPC channel (ipc-primary.ts
 * is the other end). When the primary does not answer in time, the worker decides alone with its
 * own Lockout and its own slot counts, as one process would: a slow primary never stops sign-ins.
 */
import type { Attempt, LockoutVerdict } from '../auth/lockout.js';
import type { Authority, BusEvent, Slot, StateBus } from './bus.js';
import { Slots } from './local-bus.js';

/** Message types on the IPC channel. */
export const MSG = {
  JOIN: 'exgate:bus-join',
  PUBLISH: 'exgate:bus-publish',
  EVENTS: 'exgate:bus-events',
  RESERVE: 'exgate:bus-reserve',
  SLOT: 'exgate:bus-slot',
  ANSWER: 'exgate:bus-answer',
  RELEASE: 'exgate:bus-release',
} as const;

/** A worker waits this long, beyond the lockout's own wait, for the primary before deciding alone. */
export const ANSWER_TIMEOUT_MS = 2000;

/** The worker's end of its IPC channel (process, in a worker). */
export interface Channel {
  send(message: unknown, callback: (err: Error | null) => void): unknown;
  on(event: 'message', listener: (message: unknown) => void): unknown;
  off(event: 'message', listener: (message: unknown) => void): unknown;
}

interface Answer {
  readonly id: number;
  readonly verdict?: LockoutVerdict;
  readonly ok?: boolean;
}

export class IpcBus implements StateBus {
  #next = 0;
  readonly #waiting = new Map<number, (answer: Answer) => void>();
  readonly #handlers = new Set<(event: BusEvent) => void>();
  /** Slots counted here while the primary does not answer (as each worker counted before). */
  readonly #alone = new Slots();
  readonly #onMessage = (msg: unknown): void => {
    const type = typeOf(msg);
    if (type === MSG.EVENTS) {
      for (const e of (msg as { events: BusEvent[] }).events) for (const h of this.#handlers) h(e);
    } else if (type === MSG.ANSWER) {
      const answer = msg as Answer;
      const waiter = this.#waiting.get(answer.id);
      this.#waiting.delete(answer.id);
      if (waiter) waiter(answer);
      // Too late: this worker decided alone meanwhile, so the primary's reservation or slot goes back.
      else if (answer.verdict === 'open' || answer.ok === true) this.send({ type: MSG.RELEASE, id: answer.id });
    }
  };

  /** `fallback`: the worker's own Lockout, which decides when the primary does not answer. */
  constructor(
    private readonly channel: Channel,
    private readonly fallback: Authority,
    private readonly graceMs = ANSWER_TIMEOUT_MS,
  ) {
    channel.on('message', this.#onMessage);
    this.send({ type: MSG.JOIN });
  }

  publish(event: BusEvent): void {
    this.send({ type: MSG.PUBLISH, event });
  }

  subscribe(handler: (event: BusEvent) => void): () => void {
    this.#handlers.add(handler);
    return () => this.#handlers.delete(handler);
  }

  reserve(account: string, source: string, fingerprint: string): Promise<Attempt> {
    const ms = this.graceMs + (this.fallback.settings.waitMs ?? 10_000); // the primary may wait that long
    return this.ask(
      { type: MSG.RESERVE, account, source, fingerprint },
      ms,
      (id, { verdict = 'busy' }) => ({
        verdict,
        release: once(() => {
          if (verdict === 'open') this.send({ type: MSG.RELEASE, id });
        }),
      }),
      () => this.fallback.acquire(account, source, fingerprint),
    );
  }

  acquireSlot(key: string, cap: number): Promise<Slot | null> {
    return this.ask(
      { type: MSG.SLOT, key, cap },
      this.graceMs,
      (id, { ok }) => (ok === true ? { release: once(() => this.send({ type: MSG.RELEASE, id })) } : null),
      () => this.#alone.take(key, cap),
    );
  }

  close(): void {
    this.channel.off('message', this.#onMessage);
  }

  /** Asks the primary; `alone` decides when it does not answer within `ms` or cannot be reached. */
  private ask<T>(
    msg: object,
    ms: number,
    answered: (id: number, a: Answer) => T,
    alone: () => T | Promise<T>,
  ): Promise<T> {
    const id = ++this.#next;
    return new Promise<T>((resolve) => {
      const decideAlone = () => {
        if (!this.#waiting.delete(id)) return;
        clearTimeout(timer);
        resolve(alone());
      };
      const timer = setTimeout(decideAlone, ms);
      this.#waiting.set(id, (a) => {
        clearTimeout(timer);
        resolve(answered(id, a));
      });
      this.send({ ...msg, id }, decideAlone);
    });
  }

  private send(msg: object, failed: () => void = () => {}): void {
    try {
      this.channel.send(msg, (err) => {
        if (err) failed();
      });
    } catch {
      failed(); // the channel is closed: the primary is gone
    }
  }
}

/** The bus of a node:cluster worker, through the primary. */
export function workerBus(lockout: Authority): StateBus {
  const channel: Channel = {
    send: (m, cb) => (process.send ? process.send(m, undefined, undefined, cb) : cb(new Error('no IPC channel'))),
    on: (e, l) => process.on(e, l),
    off: (e, l) => process.off(e, l),
  };
  return new IpcBus(channel, lockout);
}

function once(f: () => void): () => void {
  let done = false;
  return () => {
    if (!done) {
      done = true;
      f();
    }
  };
}

export function typeOf(msg: unknown): unknown {
  return typeof msg === 'object' && msg !== null ? (msg as { type?: unknown }).type : undefined;
}
