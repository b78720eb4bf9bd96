/**
 * The report itself, computed purely: access entries and a time window in, a Report out. No I/O,
 * no formatting; reading files is src/report/read.ts, printing is src/report/table.ts and
 * `JSON.stringify`. Memory grows with the distinct users, services and addresses, never with
 * the number of lines.
 */
import { isBlank, parseEntry, type AccessEntry } from './entry.js';
import { inRange, type TimeRange } from './range.js';

/** How many source addresses the report lists (by requests, most first). */
export const TOP_SOURCES = 20;

/**
 * The report, also exactly what `exgate report --json` prints. Times are ISO 8601 UTC strings,
 * a null user or client stays null (the table shows `(anonymous)` / `(unknown)`).
 *
 * ```
 * {
 *   range:  { since: string|null, until: string|null },        // the window asked for; null = open
 *   totals: { records,     // access records read, in range or not
 *             inRange,     // of those, inside the window: everything below counts only these
 *             skipped,     // non-blank lines that are not access records (operational log, junk)
 *             allowed, denied,
 *             first, last  // time span of the records in range; null when there are none
 *           },
 *   access: [ { user, service,        // decision allow, status < 400, a user: forwarded and served
 *               requests, reportOnly, // reportOnly: let through only because the policy is in report-only mode
 *               clients,              // distinct client addresses
 *               firstSeen, lastSeen } ],                        // by user, then service
 *   denials: { byReason: { [reason]: count },                   // most first; a missing reason is "(none)"
 *              byUser: [ { user, denials, byReason: { [reason]: count } } ] },  // most first, then by user
 *   sources: [ { client, requests, denials, users } ]           // top 20 by requests; users: distinct non-null users
 * }
 * ```
 */
export interface Report {
  range: { since: string | null; until: string | null };
  totals: Totals;
  access: AccessRow[];
  denials: { byReason: Record<string, number>; byUser: DenialRow[] };
  sources: SourceRow[];
}

export interface Totals {
  records: number;
  inRange: number;
  skipped: number;
  allowed: number;
  denied: number;
  first: string | null;
  last: string | null;
}

export interface AccessRow {
  user: string | null;
  service: string | null;
  requests: number;
  reportOnly: number;
  clients: number;
  firstSeen: string;
  lastSeen: string;
}

export interface DenialRow {
  user: string | null;
  denials: number;
  byReason: Record<string, number>;
}

export interface SourceRow {
  client: string | null;
  requests: number;
  denials: number;
  users: number;
}

/** The reason key for a denial logged without one (should not happen; counted, not dropped). */
export const NO_REASON = '(none)';

interface AccessAcc {
  requests: number;
  reportOnly: number;
  clients: Set<string>;
  first: number;
  last: number;
}
interface SourceAcc {
  requests: number;
  denials: number;
  users: Set<string>;
}

/** Builds a Report one line or entry at a time, so files of any size stream through it. */
export class ReportAccumulator {
  private records = 0;
  private inRange = 0;
  private skipped = 0;
  private allowed = 0;
  private first = Infinity;
  private last = -Infinity;
  private readonly access = new Map<string | null, Map<string | null, AccessAcc>>();
  private readonly denialReasons = new Map<string, number>();
  private readonly denialUsers = new Map<string | null, Map<string, number>>();
  private readonly sources = new Map<string | null, SourceAcc>();

  constructor(private readonly range: TimeRange) {}

  /** One raw log line: blank lines are ignored, lines that are not access records are counted as skipped. */
  addLine(line: string): void {
    const entry = parseEntry(line);
    if (entry) this.add(entry);
    else if (!isBlank(line)) this.skipped++;
  }

  /** One access record. */
  add(e: AccessEntry): void {
    this.records++;
    if (!inRange(this.range, e.t)) return;
    this.inRange++;
    this.first = Math.min(this.first, e.t);
    this.last = Math.max(this.last, e.t);
    this.countSource(e);
    if (e.decision === 'deny') this.countDenial(e);
    else this.countAllowed(e);
  }

  private countAllowed(e: AccessEntry): void {
    this.allowed++;
    if (e.status >= 400) return; // allowed but not served: Exchange failed (502/504) or refused it
    if (e.user === null) return; // no account: an NTLM handshake leg, autodiscover.json answered by the gateway
    const byService = getOr(this.access, e.user, () => new Map<string | null, AccessAcc>());
    const acc = getOr(byService, e.service, () => ({
      requests: 0,
      reportOnly: 0,
      clients: new Set<string>(),
      first: e.t,
      last: e.t,
    }));
    acc.requests++;
    if (e.reason === 'report-only') acc.reportOnly++;
    if (e.client !== null) acc.clients.add(e.client);
    acc.first = Math.min(acc.first, e.t);
    acc.last = Math.max(acc.last, e.t);
  }

  private countDenial(e: AccessEntry): void {
    const reason = e.reason ?? NO_REASON;
    increment(this.denialReasons, reason);
    increment(
      getOr(this.denialUsers, e.user, () => new Map<string, number>()),
      reason,
    );
  }

  private countSource(e: AccessEntry): void {
    const src = getOr(this.sources, e.client, () => ({ requests: 0, denials: 0, users: new Set<string>() }));
    src.requests++;
    if (e.decision === 'deny') src.denials++;
    if (e.user !== null) src.users.add(e.user);
  }

  /** The report so far. */
  report(): Report {
    const some = this.inRange > 0;
    return {
      range: { since: iso(this.range.since), until: iso(this.range.until) },
      totals: {
        records: this.records,
        inRange: this.inRange,
        skipped: this.skipped,
        allowed: this.allowed,
        denied: this.inRange - this.allowed,
        first: some ? iso(this.first) : null,
        last: some ? iso(this.last) : null,
      },
      access: this.accessRows(),
      denials: { byReason: countsObject(this.denialReasons), byUser: this.denialRows() },
      sources: this.sourceRows(),
    };
  }

  private accessRows(): AccessRow[] {
    const rows: AccessRow[] = [];
    for (const [user, byService] of this.access) {
      for (const [service, a] of byService) {
        rows.push({
          user,
          service,
          requests: a.requests,
          reportOnly: a.reportOnly,
          clients: a.clients.size,
          firstSeen: isoOf(a.first),
          lastSeen: isoOf(a.last),
        });
      }
    }
    return rows.sort((a, b) => byName(a.user, b.user) || byName(a.service, b.service));
  }

  private denialRows(): DenialRow[] {
    const rows = [...this.denialUsers].map(([user, reasons]) => ({
      user,
      denials: sum(reasons.values()),
      byReason: countsObject(reasons),
    }));
    return rows.sort((a, b) => b.denials - a.denials || byName(a.user, b.user));
  }

  private sourceRows(): SourceRow[] {
    const rows = [...this.sources].map(([client, s]) => ({
      client,
      requests: s.requests,
      denials: s.denials,
      users: s.users.size,
    }));
    return rows.sort((a, b) => b.requests - a.requests || byName(a.client, b.client)).slice(0, TOP_SOURCES);
  }
}

/** The whole report over entries already in memory (tests, small inputs). */
export function summarize(entries: Iterable<AccessEntry>, range: TimeRange): Report {
  const acc = new ReportAccumulator(range);
  for (const e of entries) acc.add(e);
  return acc.report();
}

function getOr<K, V>(map: Map<K, V>, key: K, create: () => V): V {
  let v = map.get(key);
  if (v === undefined) map.set(key, (v = create()));
  return v;
}

function increment<K>(map: Map<K, number>, key: K): void {
  map.set(key, (map.get(key) ?? 0) + 1);
}

function sum(values: Iterable<number>): number {
  let n = 0;
  for (const v of values) n += v;
  return n;
}

/** Counts as a plain object, most first, ties by name: the order JSON and the table show. */
function countsObject(map: Map<string, number>): Record<string, number> {
  const sorted = [...map].sort(([a, x], [b, y]) => y - x || byName(a, b));
  return Object.fromEntries(sorted);
}

/** Case-insensitive order (AD names are), exact order breaking ties; null sorts last. */
function byName(a: string | null, b: string | null): number {
  if (a === b) return 0;
  if (a === null) return 1;
  if (b === null) return -1;
  const la = a.toLowerCase();
  const lb = b.toLowerCase();
  return la < lb ? -1 : la > lb ? 1 : a < b ? -1 : 1;
}

function iso(t: number | null): string | null {
  return t === null ? null : isoOf(t);
}

function isoOf(t: number): string {
  return new Date(t).toISOString();
}
