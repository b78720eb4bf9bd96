/**
 * What the Redis bus keeps for gateways that start later (the Hub's retained events, local-bus.ts), the
 * key names, and what a gateway told while Redis was away (told again when it is back: a sign-out made
 * during an outage still ends the session everywhere).
 */
import type { Redis } from 'ioredis';
import type { BusEvent, SessionRecord } from './bus.js';
import { mergeSession } from './sessions.js';

/** One message on the channel: the member that sent it, its number there, the event. */
export interface Envelope {
  readonly m: string;
  readonly i: number;
  readonly e: BusEvent;
}

/** A kept event, with its envelope id (null for a session, whose merge needs none). */
export interface Kept {
  readonly id: string | null;
  readonly e: BusEvent;
}

/** Every key and the channel, under `prefix`. */
export function keysOf(prefix: string) {
  return {
    channel: `${prefix}events`,
    kept: `${prefix}kept`,
    member: `${prefix}member:`,
    fail: (account: string) => `${prefix}fail:${account}`,
    holds: (account: string) => `${prefix}holds:${account}`,
    slot: (key: string) => `${prefix}slot:${key}`,
    session: (key: string) => `${prefix}session:${key}`,
    sessions: `${prefix}session:*`,
  };
}
export type Keys = ReturnType<typeof keysOf>;

export function idOf(env: Envelope): string {
  return `${env.m}:${env.i}`;
}

export function parseEnvelope(raw: string): Envelope | null {
  try {
    const env = JSON.parse(raw) as Envelope;
    return typeof env?.m === 'string' && typeof env.e?.kind === 'string' ? env : null;
  } catch {
    return null;
  }
}

/** The lockout events still counting (oldest first) and every session, as kept in Redis now. */
export async function readKept(redis: Redis, keys: Keys, me: string): Promise<Kept[]> {
  const out: Kept[] = [];
  for (const raw of await redis.zrangebyscore(keys.kept, Date.now(), '+inf')) {
    const env = parseEnvelope(raw);
    if (env && env.m !== me) out.push({ id: idOf(env), e: env.e });
  }
  let cursor = '0';
  do {
    const [next, found] = await redis.scan(cursor, 'MATCH', keys.sessions, 'COUNT', 1000);
    cursor = next;
    const pipe = redis.pipeline();
    for (const key of found) pipe.hgetall(key);
    for (const [err, h] of (await pipe.exec()) ?? []) {
      const kept = err ? null : sessionOf(h as Record<string, string>);
      if (kept) out.push({ id: null, e: kept });
    }
  } while (cursor !== '0');
  return out;
}

function sessionOf(h: Record<string, string>): BusEvent | null {
  if (!h.rec || !h.until) return null;
  try {
    const rec = JSON.parse(h.rec) as SessionRecord;
    const session = { ...rec, lastSeenAt: Number(h.seen ?? rec.lastSeenAt), endedAt: h.ended ? Number(h.ended) : null };
    return { kind: 'session', session, until: Number(h.until) };
  } catch {
    return null;
  }
}

/** What a gateway told while Redis was away: bounded; sessions merged one per key, the last settings. */
export class Deferred {
  #lockout: BusEvent[] = [];
  readonly #sessions = new Map<string, Extract<BusEvent, { kind: 'session' }>>();
  #settings: BusEvent | null = null;

  constructor(private readonly max = 10_000) {}

  add(event: BusEvent): void {
    if (event.kind === 'settings') this.#settings = event;
    else if (event.kind === 'lockout') {
      this.#lockout.push(event);
      if (this.#lockout.length > this.max) this.#lockout = this.#lockout.slice(-this.max);
    } else {
      const known = this.#sessions.get(event.session.key);
      const session = known ? mergeSession(known.session, event.session) : event.session;
      this.#sessions.delete(event.session.key); // re-inserted last: the oldest go first
      this.#sessions.set(event.session.key, { ...event, session });
      if (this.#sessions.size > this.max) this.#sessions.delete(this.#sessions.keys().next().value as string);
    }
  }

  /** Everything deferred, oldest first; empties it. */
  take(): BusEvent[] {
    const all = [...(this.#settings ? [this.#settings] : []), ...this.#lockout, ...this.#sessions.values()];
    this.#lockout = [];
    this.#sessions.clear();
    this.#settings = null;
    return all;
  }
}
