// Unit tests for the directory guards (src/directory/limits.ts): the per-DC circuit breaker on an
// injected clock, and the bounded queue of password checks (exact concurrency, overflow, waiting
// time, FIFO hand-over), its timers driven by vitest's fake timers.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { DcBreaker, Limiter } from '../../src/directory/limits.js';
import { DirectoryUnavailableError } from '../../src/errors.js';

const DC1 = 'ldaps://dc1.lab.test';
const DC2 = 'ldaps://dc2.lab.test';
const DC3 = 'ldaps://dc3.lab.test';
const ALL = [DC1, DC2, DC3];

function breaker(cooldownMs = 30_000) {
  const clock = { t: 1_700_000_000_000 };
  return {
    b: new DcBreaker(cooldownMs, () => clock.t),
    advance: (ms: number) => {
      clock.t += ms;
    },
  };
}

describe('DcBreaker', () => {
  it('offers every DC, in the configured order, until one fails', () => {
    expect(breaker().b.usable(ALL)).toEqual(ALL);
  });

  it('skips a tripped DC and keeps the order of the others', () => {
    const { b } = breaker();
    b.trip(DC1);
    expect(b.usable(ALL)).toEqual([DC2, DC3]);
    expect(b.usable([DC3, DC1, DC2])).toEqual([DC3, DC2]);
  });

  it.each<[elapsed: number, usable: boolean]>([
    [0, false],
    [29_999, false],
    [30_000, true],
    [90_000, true],
  ])('%i ms after a trip (cooldown 30 s) the DC is usable: %s', (elapsed, usable) => {
    const { b, advance } = breaker();
    b.trip(DC2);
    advance(elapsed);
    expect(b.usable(ALL)).toEqual(usable ? ALL : [DC1, DC3]);
  });

  it('offers a DC again at once after reset (it answered)', () => {
    const { b } = breaker();
    b.trip(DC1);
    b.reset(DC1);
    expect(b.usable(ALL)).toEqual(ALL);
  });

  it('restarts the cooldown on a second trip', () => {
    const { b, advance } = breaker();
    b.trip(DC1);
    advance(20_000);
    b.trip(DC1);
    advance(20_000); // 40 s after the first trip, 20 s after the second
    expect(b.usable(ALL)).toEqual([DC2, DC3]);
    advance(10_000);
    expect(b.usable(ALL)).toEqual(ALL);
  });

  it('offers nothing when every DC is tripped', () => {
    const { b } = breaker();
    for (const u of ALL) b.trip(u);
    expect(b.usable(ALL)).toEqual([]);
  });

  it('ignores a reset of a DC that never failed, and unknown URLs are usable', () => {
    const { b } = breaker();
    b.reset(DC1);
    expect(b.usable(['ldap://other'])).toEqual(['ldap://other']);
  });
});

/** A promise with its resolve and reject outside. */
function deferred<T = void>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Lets pending promise callbacks run (no timers). */
const settle = () => new Promise<void>((r) => setImmediate(r));

describe('Limiter', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('runs at most `max` tasks at once under load, and reaches max', async () => {
    const limiter = new Limiter(3, 100, 60_000);
    let running = 0;
    let peak = 0;
    const task = (i: number) => async () => {
      running++;
      peak = Math.max(peak, running);
      for (let k = 0; k < (i % 4) + 1; k++) await settle(); // uneven task lengths
      running--;
      return i;
    };
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => limiter.run(task(i))));
    expect(results).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(peak).toBe(3);
    expect(limiter.pending).toBe(0);
  });

  it('hands slots over in arrival order', async () => {
    const limiter = new Limiter(1, 10, 60_000);
    const started: number[] = [];
    const gates = Array.from({ length: 5 }, () => deferred());
    const runs = gates.map((g, i) =>
      limiter.run(async () => {
        started.push(i);
        await g.promise;
      }),
    );
    await settle();
    expect(started).toEqual([0]);
    expect(limiter.pending).toBe(4);
    for (const [i, g] of gates.entries()) {
      g.resolve();
      await settle();
      expect(started).toEqual(Array.from({ length: Math.min(i + 2, 5) }, (_, k) => k));
    }
    await Promise.all(runs);
  });

  it('rejects at once with DirectoryUnavailableError when the queue is full, without running the task', async () => {
    const limiter = new Limiter(1, 2, 60_000);
    const gate = deferred();
    const held = [0, 1, 2].map(() => limiter.run(() => gate.promise)); // 1 running + 2 waiting
    await settle();
    expect(limiter.pending).toBe(2);
    const overflow = vi.fn(async () => 'ran');
    await expect(limiter.run(overflow)).rejects.toBeInstanceOf(DirectoryUnavailableError);
    expect(overflow).not.toHaveBeenCalled();
    expect(limiter.pending).toBe(2);
    gate.resolve();
    await Promise.all(held);
    expect(await limiter.run(async () => 'free again')).toBe('free again');
  });

  it('rejects a task that waited waitMs for a slot, and never runs it', async () => {
    vi.useFakeTimers();
    const limiter = new Limiter(1, 5, 100);
    const gate = deferred();
    const holder = limiter.run(() => gate.promise);
    const late = vi.fn(async () => 'ran');
    const waiting = limiter.run(late);
    const outcome = waiting.then(
      () => 'resolved',
      (e: unknown) => e,
    );
    await vi.advanceTimersByTimeAsync(99);
    expect(limiter.pending).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    const err = await outcome;
    expect(err).toBeInstanceOf(DirectoryUnavailableError);
    expect((err as Error).message).toMatch(/waited 100 ms/);
    expect(late).not.toHaveBeenCalled();
    expect(limiter.pending).toBe(0);
    gate.resolve();
    await holder;
    expect(late).not.toHaveBeenCalled();
  });

  it('loses no slot to a waiter that timed out', async () => {
    vi.useFakeTimers();
    const limiter = new Limiter(2, 5, 100);
    const gate = deferred();
    const holders = [limiter.run(() => gate.promise), limiter.run(() => gate.promise)];
    const timedOut = limiter.run(async () => 'x').catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(100);
    expect(await timedOut).toBeInstanceOf(DirectoryUnavailableError);
    gate.resolve();
    await Promise.all(holders);
    // Both slots are free again: two tasks run side by side, a third waits.
    const second = deferred();
    let running = 0;
    const task = async () => {
      running++;
      await second.promise;
      running--;
    };
    const runs = [limiter.run(task), limiter.run(task), limiter.run(task)];
    await vi.advanceTimersByTimeAsync(0);
    expect(running).toBe(2);
    expect(limiter.pending).toBe(1);
    second.resolve();
    await Promise.all(runs);
  });

  it('frees the slot when a task rejects or throws, and passes the error on', async () => {
    const limiter = new Limiter(1, 5, 60_000);
    await expect(
      limiter.run(async () => {
        throw new Error('bind failed');
      }),
    ).rejects.toThrow('bind failed');
    await expect(
      limiter.run(() => {
        throw new Error('sync throw');
      }),
    ).rejects.toThrow('sync throw');
    expect(await limiter.run(async () => 'ok')).toBe('ok');
  });
});
