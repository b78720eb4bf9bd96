/**
 * The time window of `exgate report --since T --until T`: absolute ISO 8601 dates and date-times,
 * or durations back from now (`30m`, `24h`, `7d`).
 */

/**
 * A window in epoch milliseconds. `since` is inclusive, `until` exclusive, so `--since 2024-05-01
 * --until 2024-05-02` is exactly that one day. null means open on that side (the default).
 */
export interface TimeRange {
  readonly since: number | null;
  readonly until: number | null;
}

/** The default: every record, whatever its time. */
export const ALL_TIME: TimeRange = Object.freeze({ since: null, until: null });

/** A --since/--until value that is neither an ISO 8601 time nor a relative duration. */
export class TimeArgumentError extends Error {
  override readonly name = 'TimeArgumentError';
}

const UNIT_MS: Readonly<Record<string, number>> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };
const RELATIVE = /^(\d{1,6})([smhdw])$/;
// Date, or date and time (a space may stand for the T), with optional fraction and offset.
const ISO = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$/i;

/**
 * Reads one --since/--until value.
 * - `Nd`, `Nh`, `Nm`, `Ns`, `Nw`: that long before `now`.
 * - `YYYY-MM-DD`: midnight UTC starting that day.
 * - `YYYY-MM-DDTHH:MM[:SS[.fff]][Z|±HH:MM]`: that instant; without an offset, UTC (the zone the
 *   access log writes its `time` in).
 */
export function parseTime(value: string, now: number): number {
  const rel = RELATIVE.exec(value.trim());
  if (rel) return now - Number(rel[1]) * (UNIT_MS[rel[2] ?? ''] ?? 0);
  const t = parseIso(value.trim());
  if (t === null) {
    throw new TimeArgumentError(
      `${JSON.stringify(value)} is not a time: use an ISO 8601 date or date-time (2024-05-01, 2024-05-01T08:00:00Z) or a duration back from now (30m, 24h, 7d)`,
    );
  }
  return t;
}

function parseIso(value: string): number | null {
  const m = ISO.exec(value);
  if (!m) return null;
  const [, y, mo, d, h = '00', mi = '00', s = '00', frac = '', zone = 'Z'] = m;
  if (!validDate(Number(y), Number(mo), Number(d)) || Number(h) > 23 || Number(mi) > 59 || Number(s) > 59) return null;
  const offset = zone.toUpperCase() === 'Z' ? 'Z' : `${zone.slice(0, 3)}:${zone.slice(-2)}`;
  const ms = frac ? frac.slice(0, 4).padEnd(4, '0') : '.000';
  const t = Date.parse(`${y}-${mo}-${d}T${h}:${mi}:${s}${ms}${offset}`);
  return Number.isFinite(t) ? t : null;
}

/** Rejects what Date.parse would roll over (2024-02-30 → March 1). */
function validDate(y: number, mo: number, d: number): boolean {
  if (mo < 1 || mo > 12 || d < 1) return false;
  return new Date(Date.UTC(y, mo - 1, d)).getUTCDate() === d;
}

/** Both bounds of the window; a window that ends before it begins is an error, not an empty report. */
export function parseRange(since: string | undefined, until: string | undefined, now: number): TimeRange {
  const range: TimeRange = {
    since: since === undefined ? null : parseTime(since, now),
    until: until === undefined ? null : parseTime(until, now),
  };
  if (range.since !== null && range.until !== null && range.since >= range.until) {
    throw new TimeArgumentError(`--since ${since} is not before --until ${until}`);
  }
  return range;
}

/** Whether a record's time falls inside the window. */
export function inRange(range: TimeRange, t: number): boolean {
  return (range.since === null || t >= range.since) && (range.until === null || t < range.until);
}
