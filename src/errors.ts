import { STATUS_CODES } from 'node:http';

/**
 * The one catalog of outcomes: every reason of INTERFACE.md, and the HTTP status a denial with
 * that reason gets. proxy.ts `deny()` is the only writer of these responses.
 */

/** Every value the access log's `reason` field can take (INTERFACE.md, closed vocabulary). */
export const REASONS = [
  'allowed', 'report-only',
  'no-credentials', 'bad-credentials', 'account-disabled', 'account-locked', 'account-expired',
  'password-expired', 'password-must-change', 'not-allowed', 'denied-by-rule', 'unknown-service',
  'misdirected', 'bad-request', 'too-large', 'gateway-lockout', 'directory-unavailable',
  'upstream-error', 'upstream-timeout',
] as const;

export type Reason = (typeof REASONS)[number];
export type DenyReason = Exclude<Reason, 'allowed' | 'report-only'>;

/** Reasons that end in a 401 with a Basic challenge: the client should ask for a password again. */
export type CredentialReason = Extract<DenyReason,
  'no-credentials' | 'bad-credentials' | 'account-disabled' | 'account-locked' | 'account-expired' |
  'password-expired' | 'password-must-change' | 'gateway-lockout'>;

/** The status each denial answers with. */
export const DENY_STATUS: Readonly<Record<DenyReason, number>> = {
  'no-credentials': 401,
  'bad-credentials': 401,
  'account-disabled': 401,
  'account-locked': 401,
  'account-expired': 401,
  'password-expired': 401,
  'password-must-change': 401,
  'gateway-lockout': 401,
  'not-allowed': 403,
  'denied-by-rule': 403,
  'unknown-service': 404,
  'misdirected': 421,
  'bad-request': 400,
  'too-large': 413,
  'directory-unavailable': 503,
  'upstream-error': 502,
  'upstream-timeout': 504,
};

/** `HTTP/1.1 403 Forbidden`: the status line for a status, with Node's reason phrase. */
export function statusLine(status: number): string {
  return `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}`;
}

/**
 * A technical fault of the directory (unreachable, timed out, unexpected LDAP result). It is never
 * a "no": the gateway answers 503 `directory-unavailable`. The message must not carry credentials.
 */
export class DirectoryUnavailableError extends Error {
  override readonly name = 'DirectoryUnavailableError';
  readonly code = 'EXGATE_DIRECTORY_UNAVAILABLE';
  /** True when the gateway itself is saturated (bind queue full), not the DCs unreachable:
   * never a reason to fall back to stale cache entries. */
  readonly overload: boolean;
  constructor(message: string, opts: { overload?: boolean } = {}) {
    super(message);
    this.overload = opts.overload ?? false;
  }
}

/** A configuration or policy problem, located by file and key. */
export interface ConfigProblem {
  readonly file: string;
  /** Dotted key path, e.g. `directory.url` or `rules[2].allow.groups[0]`; '' for the whole file. */
  readonly key: string;
  readonly line?: number;
  readonly message: string;
}

/** Thrown when a config or policy does not load; carries every problem found, not just the first. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(readonly problems: readonly ConfigProblem[]) {
    super(problems.map(formatProblem).join('\n'));
  }
}

/** `file:line: key: message`, the form `exgate check` prints. */
export function formatProblem(p: ConfigProblem): string {
  const where = p.line === undefined ? p.file : `${p.file}:${p.line}`;
  return p.key ? `${where}: ${p.key}: ${p.message}` : `${where}: ${p.message}`;
}
