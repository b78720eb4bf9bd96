import { STATUS_CODES } from 'node:http';

/**
 * The one catalog of outcomes: every reason of INTERFACE.md, and the HTTP status a denial with
 * that reason gets. proxy.ts `deny()` is the only writer of these responses.
 */

/** Every value the access log's `reason` field can take (INTERFACE.md, closed vocabulary). */
export const REASONS = [
  'allowed',
  'report-only',
  'no-credentials',
  'bad-credentials',
  'account-disabled',
  'account-locked',
  'account-expired',
  'password-expired',
  'password-must-change',
  'not-allowed',
  'denied-by-rule',
  'unknown-service',
  'misdirected',
  'bad-request',
  'too-large',
  'gateway-lockout',
  'directory-unavailable',
  'upstream-error',
  'upstream-timeout',
  'upstream-unavailable',
  'no-session',
] as const;

export type Reason = (typeof REASONS)[number];
export type DenyReason = Exclude<Reason, 'allowed' | 'report-only'>;

/** Reasons that end in a 401 with a Basic challenge: the client should ask for a password again. */
export type CredentialReason = Extract<
  DenyReason,
  | 'no-credentials'
  | 'bad-credentials'
  | 'account-disabled'
  | 'account-locked'
  | 'account-expired'
  | 'password-expired'
  | 'password-must-change'
  | 'gateway-lockout'
>;

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
  misdirected: 421,
  'bad-request': 400,
  'too-large': 413,
  'directory-unavailable': 503,
  'upstream-error': 502,
  'upstream-timeout': 504,
  /** No healthy Exchange server for the service; 503 carries Retry-After (respond.ts). */
  'upstream-unavailable': 503,
  // A browser request without a live session (forms): 302 to the sign-in page for GET, else 440
  // (Exchange's Login Timeout); the forms front-end answers with its page.
  'no-session': 440,
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
  override readonly name: string = 'DirectoryUnavailableError';
  readonly code = 'EXGATE_DIRECTORY_UNAVAILABLE';
  /** True when the gateway itself is saturated (bind queue full), not the DCs unreachable:
   * never a reason to fall back to stale cache entries. */
  readonly overload: boolean;
  /** True when a DC answered (an LDAP error, a certificate the gateway refused): not "unreachable". */
  readonly answered: boolean;
  constructor(message: string, opts: { overload?: boolean; answered?: boolean } = {}) {
    super(message);
    this.overload = opts.overload ?? false;
    this.answered = opts.answered ?? false;
  }
}

/**
 * A DC refused the service account itself (wrong password, disabled, locked out...): a config
 * fault, never retried, since each retry with a wrong password counts toward AD's lockout (issue
 * 10: retried every 5 s, the account was locked within 30 s). Requests meanwhile still get 503.
 */
export class ServiceAccountRefusedError extends DirectoryUnavailableError {
  override readonly name = 'ServiceAccountRefusedError';
  /** The config key to fix, e.g. `directory.bindPasswordFile`. */
  readonly key: string;
  constructor(message: string, key: string) {
    super(message, { answered: true });
    this.key = key;
  }
}

/** A system error in words, with its code: `the address is already in use (EADDRINUSE)`. */
export function systemErrorText(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  const words = code === undefined ? undefined : SYSTEM_ERRORS[code];
  if (words) return `${words} (${code})`;
  return err instanceof Error ? err.message : String(err);
}

const SYSTEM_ERRORS: Readonly<Record<string, string>> = {
  EADDRINUSE: 'the address is already in use (another process listens there)',
  EADDRNOTAVAIL: 'the address is not on this machine',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOENT: 'no such file or directory',
  ENOTDIR: 'a part of the path is not a directory',
  EISDIR: 'it is a directory',
  EROFS: 'read-only file system',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  EIO: 'input/output error',
  ECONNREFUSED: 'connection refused (nothing listens there)',
  ECONNRESET: 'the connection was reset',
  ETIMEDOUT: 'no answer in time',
  EHOSTUNREACH: 'no route to the host',
  ENETUNREACH: 'the network is unreachable',
  ENOTFOUND: 'the name does not resolve',
  EAI_AGAIN: 'the name could not be resolved now (DNS)',
};

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
  constructor(
    readonly problems: readonly ConfigProblem[],
    opts?: { cause?: unknown },
  ) {
    super(problems.map(formatProblem).join('\n'), opts);
  }
}

/** `file:line: key: message`, the form `exgate check` prints. */
export function formatProblem(p: ConfigProblem): string {
  const where = p.line === undefined ? p.file : `${p.file}:${p.line}`;
  return p.key ? `${where}: ${p.key}: ${p.message}` : `${where}: ${p.message}`;
}

/**
 * What a command prints when it cannot start: `exgate: ` and each problem on one line (file and
 * key for a config fault), never a stack. Messages carry no secret (see the error classes).
 */
export function fatalText(err: unknown): string {
  const lines =
    err instanceof ConfigError ? err.problems.map(formatProblem) : [err instanceof Error ? err.message : String(err)];
  return lines.map((l) => `exgate: ${l}\n`).join('');
}
