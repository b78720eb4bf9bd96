/**
 * The state bus of several gateways on one Redis (INTERFACE.md, "Several gateways"). Events go out on
 * one channel, and what must outlast them is kept with an expiry (redis-kept.ts). Reservations and
 * slots are Lua scripts (redis-scripts.ts), so N gateways bind at most `threshold` wrong passwords.
 * Redis away: the gateway decides alone, its lockout against max(1, floor(threshold / instances)).
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { Lockout, type Attempt, type LockoutSettings } from '../auth/lockout.js';
import type { Authority, BusEvent, Slot, StateBus } from './bus.js';
import { Slots } from './local-bus.js';
import { commandClient, subscriberClient, type Client, type RedisBusOptions } from './redis-client.js';

export type { RedisBusOptions } from './redis-client.js';
import { Deferred, idOf, keysOf, parseEnvelope, readKept, type Envelope, type Keys, type Kept } from './redis-kept.js';

/** The lockout settings a gateway uses alone: its share of the threshold. */
export function fallbackSettings(s: LockoutSettings, instances: number): LockoutSettings {
  return { ...s, threshold: Math.max(1, Math.floor(s.threshold / instances)) };
}

interface Sub {
  readonly handler: (event: BusEvent) => void;
  /** Live events held back while the kept ones are read for this handler; null once it is live. */
  buffer: Envelope[] | null;
}

export class RedisBus implements StateBus {
  readonly #me = randomBytes(9).toString('base64url');
  #seq = 0;
  #holdSeq = 0;
  readonly #keys: Keys;
  readonly #cmd: Client;
  readonly #sub: Redis;
  readonly #subscribed: Promise<unknown>;
  /** The gateway's own lockout, with its share of the threshold: it decides while Redis is away. */
  readonly #fallback: Lockout;
  readonly #alone = new Slots();
  readonly #subs = new Set<Sub>();
  /** Envelope ids already delivered (a catch-up after an outage skips them). */
  readonly #seen = new Set<string>();
  /** Keys this gateway holds something in (refreshed while it lives), with how many. */
  readonly #heldKeys = new Map<string, number>();
  readonly #held = new Set<() => void>();
  /** Releases Redis did not take (it was away): sent again when it is back. */
  #unreleased: [string, string][] = [];
  readonly #deferred = new Deferred();
  readonly #holdMs: number;
  readonly #timer: NodeJS.Timeout;
  #up = { cmd: false, sub: false };
  #outage = false;
  #applying = false;
  #closed = false;

  constructor(
    private readonly lockout: Authority,
    private readonly opts: RedisBusOptions,
  ) {
    this.#keys = keysOf(opts.redis.keyPrefix);
    this.#holdMs = opts.holdMs ?? 15_000;
    this.#fallback = new Lockout(fallbackSettings(lockout.settings, opts.instances));
    this.#cmd = commandClient(opts.redis);
    this.#sub = subscriberClient(opts.redis);
    for (const [name, conn] of [['cmd', this.#cmd] as const, ['sub', this.#sub] as const]) {
      conn.on('ready', () => this.#ready(name));
      conn.on('close', () => this.#down(name));
      conn.on('error', (err: Error) => this.#down(name, err));
    }
    this.#sub.on('message', (_channel: string, raw: string) => this.#heard(raw));
    this.#subscribed = this.#sub.subscribe(this.#keys.channel).catch(() => {});
    this.#timer = setInterval(() => this.#beat(), Math.max(50, this.#holdMs / 3));
    this.#timer.unref();
    this.subscribe((e) => this.#apply(e)); // the fallback hears everything, and settings reach the lockout
  }

  /** Both connections up. whenUp() resolves then (tests, check; the gateway never waits for Redis). */
  get up(): boolean {
    return this.#up.cmd && this.#up.sub;
  }
  async whenUp(): Promise<void> {
    while (!this.up) await new Promise((r) => setTimeout(r, 20));
  }

  publish(event: BusEvent): void {
    if (event.kind === 'settings') {
      if (this.#applying) return; // heard from another gateway: not told back
      this.#fallback.reconfigure(fallbackSettings(event.settings, this.opts.instances));
    } else if (event.kind === 'lockout') this.#fallback.apply(event.event);
    if (!this.#up.cmd) this.#deferred.add(event);
    else this.#send(event).catch(() => this.#deferred.add(event));
  }

  subscribe(handler: (event: BusEvent) => void): () => void {
    const sub: Sub = { handler, buffer: this.up ? [] : null }; // not up: the catch-up when it is tells it
    this.#subs.add(sub);
    if (sub.buffer) void this.#replay(sub);
    return () => this.#subs.delete(sub);
  }

  async reserve(account: string, source: string, fingerprint: string): Promise<Attempt> {
    const s = this.lockout.settings;
    const deadline = Date.now() + (s.waitMs ?? 10_000);
    const cls = this.#cls(account, source);
    const k = this.#keys;
    for (let pause = 20; ; pause = Math.min(pause * 2, 100)) {
      if (!this.#up.cmd) return this.#fallback.acquire(account, source, fingerprint);
      const hold = `${this.#me}|${++this.#holdSeq}|${cls}:${fingerprint}`;
      let answer: string[];
      try {
        const argv = [cls, fingerprint, s.threshold, k.member, this.#me, this.#holdSeq, this.#holdMs];
        answer = await this.#cmd.exReserve(k.fail(account), k.holds(account), ...argv);
      } catch {
        this.#unhold(k.holds(account), hold); // a script that timed out may still have run
        return this.#fallback.acquire(account, source, fingerprint); // timed out, or Redis went away
      }
      const [verdict, t] = answer;
      if (verdict === 'open') return { verdict, release: this.#hold(k.holds(account), hold) };
      if (verdict === 'account-locked') return { verdict, release: () => {} };
      if (verdict === 'known') {
        // Counted on another gateway, not yet heard here: now knownBad() refuses it with no bind.
        const failure = { kind: 'failure', account, source, fingerprint, t: Number(t) } as const;
        this.lockout.apply(failure);
        this.#fallback.apply(failure);
        return { verdict: 'open', release: () => {} };
      }
      if (Date.now() + pause > deadline) return { verdict: 'busy', release: () => {} };
      await new Promise((r) => setTimeout(r, pause)); // 'wait': attempts in flight settle within a bind
    }
  }

  async acquireSlot(key: string, cap: number): Promise<Slot | null> {
    if (!this.#up.cmd) return this.#alone.take(key, cap);
    const entry = `${this.#me}|${++this.#holdSeq}`;
    try {
      const got = await this.#cmd.exSlot(this.#keys.slot(key), cap, this.#keys.member, entry, this.#holdMs);
      return got === 1 ? { release: this.#hold(this.#keys.slot(key), entry) } : null;
    } catch {
      this.#unhold(this.#keys.slot(key), entry);
      return this.#alone.take(key, cap);
    }
  }

  close(): void {
    if (this.#closed) return;
    for (const release of [...this.#held]) release();
    this.#closed = true;
    clearInterval(this.#timer);
    if (this.#up.cmd) this.#cmd.del(`${this.#keys.member}${this.#me}`).catch(() => {});
    for (const c of [this.#cmd, this.#sub]) c.quit().catch(() => c.disconnect());
  }

  /** @internal tests: ends as a killed gateway does; what it held expires with its member key. */
  abandon(): void {
    this.#closed = true;
    clearInterval(this.#timer);
    this.#cmd.disconnect();
    this.#sub.disconnect();
  }

  #send(event: BusEvent): Promise<unknown> {
    const env = JSON.stringify({ m: this.#me, i: ++this.#seq, e: event } satisfies Envelope);
    const k = this.#keys;
    if (event.kind === 'settings') return this.#cmd.publish(k.channel, env);
    if (event.kind === 'session') {
      const s = event.session;
      const argv = [k.channel, env, JSON.stringify(s), s.lastSeenAt, s.endedAt ?? '', Math.floor(event.until)];
      return this.#cmd.exSession(k.session(s.key), ...argv);
    }
    const e = event.event;
    const sent: Promise<unknown>[] = [];
    // Sent before the holder's release, on the same connection: the reservation becomes a counted failure.
    if (e.kind === 'failure' && e.account !== null) {
      const field = `${this.#cls(e.account, e.source)}:${e.fingerprint}`;
      sent.push(this.#cmd.exFail(k.fail(e.account), field, e.t, this.lockout.settings.windowSeconds * 1000));
    } else if (e.kind === 'success' && e.verifiedByBind) sent.push(this.#cmd.del(k.fail(e.account))); // as AD resets
    const keepMax = this.opts.keepMax ?? 100_000;
    sent.push(this.#cmd.exEmit(k.kept, k.channel, env, Math.floor(event.until), Date.now(), keepMax));
    return Promise.all(sent);
  }

  /** Holds `entry` in the set `key` until the returned release (once); refreshed by the heartbeat. */
  #hold(key: string, entry: string): () => void {
    this.#heldKeys.set(key, (this.#heldKeys.get(key) ?? 0) + 1);
    let done = false;
    const release = () => {
      if (done) return;
      done = true;
      this.#held.delete(release);
      const n = (this.#heldKeys.get(key) ?? 1) - 1;
      if (n > 0) this.#heldKeys.set(key, n);
      else this.#heldKeys.delete(key);
      if (!this.#closed) this.#unhold(key, entry);
    };
    this.#held.add(release);
    return release;
  }

  /** Removes a hold from Redis, now or when it is back (after the command that made it, on one connection). */
  #unhold(key: string, entry: string): void {
    this.#cmd.srem(key, entry).catch(() => this.#unreleased.push([key, entry]));
  }

  /** Tells Redis this gateway lives, and keeps the keys it holds something in. */
  #beat(): void {
    if (!this.#up.cmd || this.#closed) return;
    const pipe = this.#cmd.pipeline().set(`${this.#keys.member}${this.#me}`, '1', 'PX', this.#holdMs);
    for (const key of this.#heldKeys.keys()) pipe.pexpire(key, this.#holdMs);
    pipe.exec().catch(() => {});
  }

  #heard(raw: string): void {
    const env = parseEnvelope(raw);
    if (!env || env.m === this.#me) return; // never back to the publisher
    this.#remember(idOf(env));
    for (const sub of this.#subs) {
      if (sub.buffer) sub.buffer.push(env);
      else sub.handler(env.e);
    }
  }

  /** What every gateway hears, applied here once: the fallback counts, settings reach the lockout. */
  #apply(e: BusEvent): void {
    if (e.kind === 'lockout') this.#fallback.apply(e.event);
    else if (e.kind === 'settings') {
      this.#applying = true;
      try {
        this.lockout.reconfigure(e.settings);
        this.#fallback.reconfigure(fallbackSettings(e.settings, this.opts.instances));
      } finally {
        this.#applying = false;
      }
    }
  }

  /** A handler that subscribed while Redis is up: the kept events first, then what it missed meanwhile. */
  async #replay(sub: Sub): Promise<void> {
    const kept = (await this.#kept()) ?? []; // null: Redis went away; the catch-up when it is back tells it
    const buffered = sub.buffer ?? [];
    sub.buffer = null;
    const live = new Set(buffered.map(idOf));
    for (const k of kept) if (k.id === null || !live.has(k.id)) sub.handler(k.e);
    for (const env of buffered) sub.handler(env.e);
  }

  #ready(which: 'cmd' | 'sub'): void {
    this.#up[which] = true;
    if (!this.up) return;
    this.opts.onUp?.(true);
    if (this.#outage) this.opts.log.info('state.redis: Redis is reachable again; the gateways share state again');
    this.#outage = false;
    this.#beat();
    for (const [key, entry] of this.#unreleased.splice(0)) this.#cmd.srem(key, entry).catch(() => {});
    for (const event of this.#deferred.take()) this.#send(event).catch(() => this.#deferred.add(event));
    void this.#catchUp();
  }

  /** After an outage (or at start): what was kept and not yet heard, to every live handler. */
  async #catchUp(): Promise<void> {
    const fresh = ((await this.#kept()) ?? []).filter((k) => k.id === null || !this.#seen.has(k.id));
    for (const k of fresh) if (k.id) this.#remember(k.id);
    for (const sub of this.#subs) if (!sub.buffer) for (const k of fresh) sub.handler(k.e);
  }

  /** What Redis keeps now (after SUBSCRIBE: nothing falls between); null when it cannot say. */
  #kept(): Promise<Kept[] | null> {
    return this.#subscribed.then(() => readKept(this.#cmd, this.#keys, this.#me)).catch(() => null);
  }

  /** A connection closed or failed: one log line per outage, however often ioredis retries meanwhile. */
  #down(which: 'cmd' | 'sub', err?: Error): void {
    if (err === undefined) this.#up[which] = false;
    if (this.#closed || this.#outage || (err !== undefined && this.up)) return; // a live one's 'close' follows
    this.#outage = true;
    this.opts.onUp?.(false);
    const threshold = this.#fallback.settings.threshold;
    this.opts.log.warn(
      { err: err?.message, threshold },
      'state.redis: Redis unreachable; this gateway decides alone (its share of lockout.threshold) until it is back',
    );
  }

  /** The counter a failure from this source fills (lockout.ts classKey). */
  #cls(account: string, source: string): 'f' | 'u' {
    return this.lockout.isFamiliar?.(account, source) ? 'f' : 'u';
  }

  #remember(id: string): void {
    this.#seen.add(id);
    if (this.#seen.size > 20_000) this.#seen.delete(this.#seen.values().next().value as string);
  }
}
