/**
 * Two guards that keep a struggling directory from taking the gateway down with it:
 * a circuit breaker per domain controller (a dead DC is skipped, so it adds no latency to every
 * request) and a bounded queue of password checks (a burst of logons cannot open thousands of
 * LDAP connections; past the queue the answer is 503 at once).
 */
import { DirectoryUnavailableError } from '../errors.js';

/** Remembers which DCs failed recently. */
export class DcBreaker {
  readonly #openUntil = new Map<string, number>();

  constructor(
    private readonly cooldownMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** The URLs worth trying now, in the given order. */
  usable(urls: readonly string[]): string[] {
    const t = this.now();
    return urls.filter((u) => (this.#openUntil.get(u) ?? 0) <= t);
  }

  /** A connection-level failure: skip this DC for the cooldown. */
  trip(url: string): void {
    this.#openUntil.set(url, this.now() + this.cooldownMs);
  }

  /** The DC answered. */
  reset(url: string): void {
    this.#openUntil.delete(url);
  }
}

/** At most `max` tasks at once, at most `queueMax` waiting (each no longer than `waitMs`). */
export class Limiter {
  #running = 0;
  readonly #queue: { start: () => void; timer: NodeJS.Timeout }[] = [];

  constructor(
    private readonly max: number,
    private readonly queueMax: number,
    private readonly waitMs: number,
  ) {}

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.#running < this.max) this.#running++;
    else await this.wait(); // the slot is handed over by release()
    try {
      return await task();
    } finally {
      this.release();
    }
  }

  private release(): void {
    const next = this.#queue.shift();
    if (next) next.start();
    else this.#running--;
  }

  get pending(): number {
    return this.#queue.length;
  }

  private wait(): Promise<void> {
    if (this.#queue.length >= this.queueMax) {
      return Promise.reject(
        new DirectoryUnavailableError(`too many password checks waiting (${this.queueMax})`, { overload: true }),
      );
    }
    return new Promise((resolve, reject) => {
      const entry = {
        start: () => {
          clearTimeout(entry.timer);
          resolve();
        },
        timer: setTimeout(() => {
          this.#queue.splice(this.#queue.indexOf(entry), 1);
          reject(
            new DirectoryUnavailableError(`a password check waited ${this.waitMs} ms for a free slot`, {
              overload: true,
            }),
          );
        }, this.waitMs),
      };
      this.#queue.push(entry);
    });
  }
}
