/**
 * Browser sessions (forms sign-in), replicated over the state bus: every member holds the table and
 * merges what the others publish, so a session made on one worker (or gateway) is valid on all and an
 * ended one is ended on all. The table knows sessions by a hash of their ID only; the ID itself lives in
 * the browser's cookie and nowhere else. Records merge by a rule that any order of delivery agrees on.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Account } from '../directory/directory.js';
import type { SessionRecord, StateBus } from './bus.js';

/** The limits of a session (`session:` in the config). */
export interface SessionSettings {
  /** Ends a session unused this long. Default: 480 minutes, OWA's private-computer timeout. */
  readonly idleMinutes: number;
  /** Ends a session this long after sign-in, used or not. Default: 24 hours. */
  readonly maxHours: number;
  /** Sessions held at most; the oldest go first. Default: 100000. */
  readonly max: number;
}

/** The cookie that carries the session ID (INTERFACE.md). */
export const SESSION_COOKIE = 'exgate-session';
/** 32 random bytes, base64url: 256 bits, never a user name. */
const ID_SHAPE = /^[A-Za-z0-9_-]{43}$/;
const MINUTE = 60_000;

/** What a live session says: who signed in, for which service, and its table key. */
export type Session = SessionRecord;

/** Which of two records of one session wins: ended is final, the later use counts. Commutative. */
export function mergeSession(a: SessionRecord, b: SessionRecord): SessionRecord {
  const endedAt = a.endedAt ?? b.endedAt;
  const lastSeenAt = Math.max(a.lastSeenAt, b.lastSeenAt);
  if (endedAt === a.endedAt && lastSeenAt === a.lastSeenAt) return a;
  return { ...a, lastSeenAt, endedAt: endedAt ?? null };
}

export class Sessions {
  readonly #table = new Map<string, SessionRecord>();
  /** When each session's use was last told to the other members. */
  readonly #told = new Map<string, number>();
  readonly #unsubscribe: () => void;
  #settings: SessionSettings;

  constructor(
    private readonly bus: StateBus,
    settings: SessionSettings,
    private readonly now: () => number = Date.now,
  ) {
    this.#settings = settings;
    this.#unsubscribe = bus.subscribe((event) => {
      if (event.kind === 'session') this.#merge(event.session);
    });
  }

  /** A new session for `account`; returns the ID for the cookie (a new one at every sign-in: no fixation). */
  start(account: Account, service: 'owa' | 'ecp'): string {
    const id = randomBytes(32).toString('base64url');
    const t = this.now();
    const record: SessionRecord = { key: keyOf(id), account, service, createdAt: t, lastSeenAt: t, endedAt: null };
    this.#merge(record);
    this.#tell(record);
    return id;
  }

  /** The live session a cookie value names, marked as used now; null when unknown, ended or expired. */
  find(id: string | null): Session | null {
    if (id === null || !ID_SHAPE.test(id)) return null;
    const key = keyOf(id);
    const record = this.#table.get(key);
    if (!record || record.endedAt !== null) return null;
    const t = this.now();
    if (this.#expired(record, t)) {
      this.#table.delete(key);
      this.#told.delete(key);
      return null;
    }
    const used = { ...record, lastSeenAt: t };
    this.#table.set(key, used);
    // Use is told at most every touchMs: the others' idle clocks lag by that much at most.
    if (t - (this.#told.get(key) ?? 0) >= this.#touchMs()) this.#tell(used);
    return used;
  }

  /** Ends a session here and on every member (sign-out, a replaced sign-in, a user AD no longer allows). */
  end(session: Pick<SessionRecord, 'key'>): void {
    const record = this.#table.get(session.key);
    if (!record || record.endedAt !== null) return;
    const ended = { ...record, endedAt: this.now() };
    this.#table.set(session.key, ended);
    this.#tell(ended);
  }

  /** Ends the session a cookie value names, if any; with `service`, only a session signed in for it. */
  endId(id: string | null, service?: 'owa' | 'ecp'): void {
    if (id === null || !ID_SHAPE.test(id)) return;
    const key = keyOf(id);
    if (service === undefined || this.#table.get(key)?.service === service) this.end({ key });
  }

  /** New limits (a reload): they apply to the sessions already made too. */
  reconfigure(settings: SessionSettings): void {
    this.#settings = settings;
  }

  get settings(): SessionSettings {
    return this.#settings;
  }

  /** Live sessions this member knows (the exgate_sessions gauge). */
  live(): number {
    const t = this.now();
    let n = 0;
    for (const r of this.#table.values()) if (r.endedAt === null && !this.#expired(r, t)) n++;
    return n;
  }

  close(): void {
    this.#unsubscribe();
  }

  #expired(r: SessionRecord, t: number): boolean {
    return (
      t - r.lastSeenAt > this.#settings.idleMinutes * MINUTE || t - r.createdAt > this.#settings.maxHours * 60 * MINUTE
    );
  }

  #touchMs(): number {
    return Math.min(MINUTE, (this.#settings.idleMinutes * MINUTE) / 10);
  }

  #merge(incoming: SessionRecord): void {
    const known = this.#table.get(incoming.key);
    this.#table.set(incoming.key, known ? mergeSession(known, incoming) : incoming);
    if (!known) this.#bound();
  }

  #tell(record: SessionRecord): void {
    this.#told.set(record.key, record.lastSeenAt);
    // Kept by the bus until the session's absolute limit: after that no member needs it.
    this.bus.publish({
      kind: 'session',
      session: record,
      until: record.createdAt + this.#settings.maxHours * 3_600_000,
    });
  }

  /** Drops expired records, then the oldest, beyond `max` (a Map iterates in insertion order). */
  #bound(): void {
    if (this.#table.size <= this.#settings.max) return;
    const t = this.now();
    for (const [key, r] of this.#table) {
      if (this.#table.size <= this.#settings.max) return;
      if (r.endedAt !== null || this.#expired(r, t)) this.#drop(key);
    }
    for (const key of this.#table.keys()) {
      if (this.#table.size <= this.#settings.max) return;
      this.#drop(key);
    }
  }

  #drop(key: string): void {
    this.#table.delete(key);
    this.#told.delete(key);
  }
}

/** The table key of a session ID: its SHA-256, so the table (and Redis) never holds a usable cookie. */
function keyOf(id: string): string {
  return createHash('sha256').update(id).digest('base64url');
}

/** The session ID among a request's raw `Cookie` lines (the last one wins, as in ASP.NET); null when none. */
export function sessionIdOf(cookieLines: readonly string[]): string | null {
  let id: string | null = null;
  for (const line of cookieLines) {
    for (const pair of line.split(';')) {
      const eq = pair.indexOf('=');
      if (eq > 0 && pair.slice(0, eq).trim() === SESSION_COOKIE) id = pair.slice(eq + 1).trim();
    }
  }
  return id;
}

/** A `Cookie` line without the gateway's own cookie (it never reaches Exchange); null when nothing is left. */
export function withoutSessionCookie(line: string): string | null {
  if (!line.includes(SESSION_COOKIE)) return line;
  const kept = line
    .split(';')
    .filter((pair) => pair.slice(0, Math.max(0, pair.indexOf('='))).trim() !== SESSION_COOKIE)
    .map((p) => p.trim())
    .filter(Boolean);
  return kept.length > 0 ? kept.join('; ') : null;
}

/** The Set-Cookie of a new session (INTERFACE.md); Max-Age is the absolute limit. */
export function sessionCookie(id: string, settings: SessionSettings): string {
  return `${SESSION_COOKIE}=${id}; Path=/; Max-Age=${Math.round(settings.maxHours * 3600)}; Secure; HttpOnly; SameSite=Lax`;
}

/** The Set-Cookie that removes the cookie from the browser (sign-out, a session that ended). */
export const EXPIRED_SESSION_COOKIE = `${SESSION_COOKIE}=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Secure; HttpOnly; SameSite=Lax`;
