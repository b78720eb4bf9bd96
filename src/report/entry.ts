/**
 * One access-log line → the few fields the report needs. The operational log may be mixed into
 * the same file (both are pino JSON lines), so a line counts as an access record only when it
 * carries the fields every access record has: `time`, `method`, `status` and `decision`.
 */

/**
 * What the report keeps of an access record (src/pipeline/access-log.ts, AccessRecord). Deliberately not
 * `detail`, `path` or `userAgent`: the report prints none of them.
 */
export interface AccessEntry {
  /** `time` in epoch milliseconds. */
  readonly t: number;
  readonly client: string | null;
  readonly user: string | null;
  readonly service: string | null;
  readonly decision: 'allow' | 'deny';
  readonly reason: string | null;
  readonly status: number;
}

/**
 * Parses one line; null when it is not an access record (not JSON, an operational log line, a
 * record with an unreadable `time`). A field of the wrong type other than the four required
 * ones reads as null rather than rejecting the record.
 */
export function parseEntry(line: string): AccessEntry | null {
  if (line.trimStart()[0] !== '{') return null;
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return null;
  }
  return typeof value === 'object' && value !== null && !Array.isArray(value)
    ? toEntry(value as Record<string, unknown>)
    : null;
}

function toEntry(r: Record<string, unknown>): AccessEntry | null {
  const { time, method, status, decision } = r;
  if (typeof time !== 'string' || typeof method !== 'string') return null;
  if (typeof status !== 'number' || !Number.isFinite(status)) return null;
  if (decision !== 'allow' && decision !== 'deny') return null;
  const t = Date.parse(time);
  if (!Number.isFinite(t)) return null;
  return {
    t,
    decision,
    status,
    client: str(r.client),
    user: str(r.user),
    service: str(r.service),
    reason: str(r.reason),
  };
}

function str(v: unknown): string | null {
  return typeof v === 'string' ? v : null;
}

/** Whether a line is blank: blank lines are neither records nor counted as skipped. */
export function isBlank(line: string): boolean {
  return line.trim() === '';
}
