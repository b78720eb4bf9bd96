/**
 * The one writer of the gateway's own answers (STYLE.md §6): refusals of parsed requests (deny,
 * fail), refusals on a raw socket (refuseSocket: the tunnel, parser errors, CONNECT), the
 * gateway's own answers (respond) and the head of a relayed response (relayHead). Statuses and
 * their headers (challenges, Retry-After, Connection) come from the catalogue in errors.ts.
 */
import { STATUS_CODES, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { AccessRecord } from './access-log.js';
import { DENY_STATUS, statusLine, type DenyReason } from '../errors.js';
import { basicChallenge, type BrowserPage } from '../auth/front-ends.js';
import { PAGE_CSP } from '../auth/forms-pages.js';

/** Seconds a client is told to wait after a 503. */
const RETRY_AFTER_SECONDS = 10;

/** Options of a denial's response. */
export interface DenyOptions {
  /** For 401: the challenges to offer (default: Basic, realm "exgate"). */
  readonly challenges?: readonly string[];
  readonly detail?: string | undefined;
  readonly retryAfterSeconds?: number;
  /** A more precise status than the catalog's: `bad-request` 405/417/501, `gateway-lockout` 429. */
  readonly status?: number | undefined;
  /** A browser's answer instead (forms): a redirect to the sign-in page, a 440, the 403 page. */
  readonly page?: BrowserPage | undefined;
}

/**
 * Answers a request with the status its reason calls for (errors.ts) and records why. Closes the
 * connection when the request body was not read, so a denied upload is never read to its end.
 */
export function deny(
  req: IncomingMessage,
  res: ServerResponse,
  record: AccessRecord,
  reason: DenyReason,
  opts: DenyOptions = {},
): void {
  record.decision = 'deny';
  fail(req, res, record, reason, opts);
}

/**
 * Writes the response for a reason without touching the record's decision: an allowed request
 * that Exchange failed (502/504) keeps `decision: allow`. After the response has started, all it
 * can do is cut the connection.
 */
export function fail(
  req: IncomingMessage,
  res: ServerResponse,
  record: AccessRecord,
  reason: DenyReason,
  opts: DenyOptions = {},
): void {
  record.reason = reason;
  if (opts.detail !== undefined) record.detail = opts.detail;
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const status = opts.page?.status ?? statusOf(reason, opts);
  const body = opts.page ? (opts.page.html ?? '') : `${status} ${STATUS_CODES[status] ?? ''}\n`;
  const headers: Record<string, string | number | string[]> = {
    'content-type': opts.page ? 'text/html; charset=utf-8' : 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    ...(opts.page ? pageHeaders(opts.page) : refusalHeaders(status, opts)),
  };
  // A request without a body is whole even while its 'request' event runs (req.complete is set after).
  const unread =
    !req.complete && (req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0);
  const drain = unread && drainable(req);
  if (CLOSES.has(status) || status >= 500 || (unread && !drain)) {
    headers.connection = 'close';
    res.shouldKeepAlive = false;
  } else if (drain) {
    drainBody(req);
  }
  if (opts.page?.statusMessage) res.writeHead(status, opts.page.statusMessage, headers);
  else res.writeHead(status, headers);
  res.end(req.method === 'HEAD' ? undefined : body);
}

/** A browser page's own headers: where it sends the browser, the cookies it drops, a CSP. */
function pageHeaders(page: BrowserPage): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = { 'content-security-policy': PAGE_CSP };
  if (page.location) headers.location = page.location;
  if (page.setCookie?.length) headers['set-cookie'] = [...page.setCookie];
  return headers;
}

/** Refusals after which the connection cannot be trusted to carry another request. */
const CLOSES: ReadonlySet<number> = new Set([400, 408, 413, 421, 431]);

/** The largest unread body a refusal reads and drops to keep the connection (a small SOAP call). */
const DRAIN_MAX_BYTES = 64 * 1024;
/** How long it may take to arrive before the connection is cut after all. */
const DRAIN_MS = 5_000;

/**
 * Whether a refused request's unread body is small and declared, so the refusal can read and drop
 * it and keep the connection: clients that try every call anonymously first and send head and body
 * in two writes (DavMail through Apache HttpClient) would otherwise need a TLS handshake per call.
 * A chunked or large body, or one a client holds back for `100 Continue`, still closes.
 */
function drainable(req: IncomingMessage): boolean {
  if (req.headers['transfer-encoding'] !== undefined || req.headers.expect !== undefined) return false;
  return Number(req.headers['content-length']) <= DRAIN_MAX_BYTES;
}

/** Reads and drops the rest of a small body, bounded in time; never kept. */
function drainBody(req: IncomingMessage): void {
  const timer = setTimeout(() => req.socket.destroy(), DRAIN_MS);
  timer.unref();
  req.once('end', () => clearTimeout(timer));
  req.once('close', () => clearTimeout(timer));
  req.resume();
}

/** Answers a request from the gateway itself (autodiscover.json), never from Exchange. */
export function respond(
  res: ServerResponse,
  record: AccessRecord,
  contentType: string,
  body: string,
  detail: string,
): void {
  record.decision = 'allow';
  record.reason = 'allowed';
  record.detail = detail;
  record.bytesOut = Buffer.byteLength(body);
  res.writeHead(200, { 'content-type': contentType, 'content-length': record.bytesOut, 'cache-control': 'no-store' });
  res.end(body);
}

/** The status a refusal answers with: the catalogue's, or the more precise one a stage chose. */
export function statusOf(reason: DenyReason, opts: Pick<DenyOptions, 'status'> = {}): number {
  return PRECISE.has(reason) && opts.status ? opts.status : DENY_STATUS[reason];
}
/** Reasons whose status a stage may refine: `bad-request` 405/408/417/431/501/505, `gateway-lockout` 429/503. */
const PRECISE: ReadonlySet<DenyReason> = new Set(['bad-request', 'gateway-lockout']);

/** The headers a refusal's status calls for: the challenges of a 401, Retry-After of a 503 or 429. */
function refusalHeaders(status: number, opts: DenyOptions): Record<string, string | number | string[]> {
  if (status === 401) return { 'WWW-Authenticate': [...(opts.challenges ?? [basicChallenge('exgate')])] };
  if (status === 503) return { 'Retry-After': RETRY_AFTER_SECONDS };
  if (status === 429) return { 'Retry-After': opts.retryAfterSeconds ?? RETRY_AFTER_SECONDS };
  return {};
}

/**
 * Refuses on a raw socket (no ServerResponse exists: the Outlook Anywhere tunnel, parser errors,
 * CONNECT) with the same status and headers deny() would give, and closes the connection.
 * Records the reason; `keepDecision` leaves the record's decision as it is (an allowed tunnel
 * that Exchange failed keeps `allow`, as fail() does).
 */
export function refuseSocket(
  socket: Socket,
  record: AccessRecord,
  reason: DenyReason,
  opts: DenyOptions & { keepDecision?: boolean } = {},
): number {
  if (!opts.keepDecision) record.decision = 'deny';
  record.reason = reason;
  if (opts.detail !== undefined) record.detail = opts.detail;
  const status = statusOf(reason, opts);
  record.status = status;
  endWithStatus(socket, status, refusalHeaders(status, opts));
  return status;
}

/** Answers on a raw socket with a bare status and closes it. */
export function endWithStatus(
  socket: Socket,
  status: number,
  headers: Record<string, string | number | string[]> = {},
): void {
  let head = `${statusLine(status)}\r\n`;
  for (const [name, value] of Object.entries(headers)) {
    for (const v of Array.isArray(value) ? value : [value]) head += `${name}: ${v}\r\n`;
  }
  socket.end(`${head}Content-Length: 0\r\nConnection: close\r\n\r\n`);
}

/** Writes the head of a response relayed from Exchange (forward.ts). */
export function relayHead(res: ServerResponse, status: number, message: string | undefined, headers: string[]): void {
  res.writeHead(status, message, headers);
}

/** Answers a plain status page (the admin listener). */
export function reply(res: ServerResponse, status: number, headers: OutgoingHttpHeaders, body: string): void {
  res.writeHead(status, headers);
  res.end(body);
}
