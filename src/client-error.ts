/**
 * Requests Node's HTTP parser refuses before they become a `request`: it has a fixed method
 * table, so Outlook Anywhere's RPC_IN_DATA / RPC_OUT_DATA end here as HPE_INVALID_METHOD
 * (research/node-proxy.md §1.1). They are answered with a status line and logged like any other
 * request (service `rpc`), and never forwarded. Other parser errors get 400/408/431/501.
 *
 * `err.rawPacket` is the raw read chunk, not the request: it may hold earlier pipelined requests,
 * may start in the middle of the failing head (a head longer than one TLS record), and always
 * holds the Authorization header. Only the failing request line, Host and User-Agent are read.
 */
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { newAccessRecord, type AccessRecord, type RequestHead } from './access-log.js';
import { authorizeAnonymous } from './authorize.js';
import { classifyRpc } from './classify.js';
import { DENY_STATUS, statusLine, type DenyReason } from './errors.js';
import { RPC_METHODS } from './services.js';
import type { State } from './state.js';

interface ParserError extends Error {
  code?: string;
  reason?: string;
  rawPacket?: Buffer;
  bytesParsed?: number;
}

/** The head of a request read from raw bytes: request line, Host and User-Agent only. */
export interface FailedHead extends RequestHead {
  readonly method: string;
  readonly url: string;
  readonly headers: { host?: string; 'user-agent'?: string };
}

/** What rpcPrecheck reads of an RPC request. */
interface RpcRequestLine {
  readonly method: string;
  readonly url: string;
  readonly headers: { readonly host?: string | undefined };
}

/** A status, the reason for the access log, and its detail. */
export type Verdict = [status: number, reason: DenyReason, detail: string];

/** Handles a `clientError`: answers, logs one access record, closes the connection. */
export function handleClientError(err: ParserError, socket: Socket, state: State, write: (r: AccessRecord) => void): void {
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  const head = err.rawPacket ? failedHead(err.rawPacket, err.bytesParsed ?? 0) : null;
  const record = newAccessRecord(socket, head ?? { headers: {} });
  const [status, reason, detail] = verdict(err, head, socket, state, record);
  record.status = status;
  record.reason = reason;
  record.detail = detail;
  endWithStatus(socket, status);
  write(record);
}

function verdict(err: ParserError, head: FailedHead | null, socket: Socket, state: State, record: AccessRecord): Verdict {
  if (err.code === 'HPE_HEADER_OVERFLOW') return [431, 'bad-request', 'request headers too large'];
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') return [408, 'bad-request', 'request headers not received in time'];
  if (err.code !== 'HPE_INVALID_METHOD' || !head || !RPC_METHODS.has(head.method)) {
    const why = err.reason ? ` (${printable(err.reason, 100)})` : '';
    return [err.code === 'HPE_INVALID_METHOD' ? 501 : 400, 'bad-request', `HTTP parser: ${err.code ?? 'error'}${why}`];
  }
  // Allowed, but not at the start of a connection (where rpc-tunnel.ts peeks): a tunnel needs a
  // connection of its own.
  return rpcPrecheck((socket as TLSSocket).servername, head, state, record)
    ?? [501, 'bad-request', 'Outlook Anywhere request after other requests on one connection'];
}

/**
 * What an RPC_IN_DATA / RPC_OUT_DATA request gets before credentials are asked: these methods are
 * the rpc service wherever they point (INTERFACE.md), so the policy answers first (403 when rpc is
 * denied to everyone), and one outside /rpc/ is never forwarded, whoever asks (400). Null when the
 * request may go on to authentication. Sets the record's service and rule.
 */
export function rpcPrecheck(servername: string | false | null | undefined, head: RpcRequestLine, state: State, record: AccessRecord): Verdict | null {
  const route = classifyRpc(servername, head.headers.host, head.url, state.config.names);
  if (!route.ok) return [DENY_STATUS[route.reason], route.reason, route.detail];
  record.service = 'rpc';
  const refused = authorizeAnonymous('rpc', state.policy);
  if (refused) {
    record.rule = refused.rule;
    return [403, refused.reason, 'Outlook Anywhere (RPC over HTTP) is not allowed'];
  }
  if (!route.atRpcPath) return [400, 'bad-request', `${head.method} outside /rpc/ is never forwarded`];
  return null;
}

const BLANK_LINE = Buffer.from('\r\n\r\n');
/** `METHOD SP request-target SP HTTP/x.y` (RFC 9112 §3): a method token, a visible-ASCII target. */
const REQUEST_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}) ([\x21-\x7e]+) HTTP\/\d\.\d$/;
/** Longest target kept; the access log clips the path further. */
const MAX_TARGET = 2048;
const MAX_VALUE = 256;

/**
 * Reads the head of the request the parser failed on from the raw chunk. That request starts
 * after the last blank line before `at` (the end of an earlier pipelined request), or at 0. Null
 * when no request line is there: the chunk began inside the head (a long URL spans TLS records,
 * so the 431 of a 20 kB URL sees only its tail) or the failure was in a body. Headers are read
 * only by name (Host, User-Agent): Authorization and Cookie values are never touched.
 */
export function failedHead(raw: Buffer, at: number): FailedHead | null {
  const end = Math.min(Math.max(at, 0), raw.length);
  const blank = lastBlankLineBefore(raw, end);
  // A failure found once a head is complete (or at its body's first byte) leaves `at` just past
  // the head's own blank line: then the head is the one before it.
  const head = headAt(raw, afterBlank(blank));
  if (head || blank < 0 || blank + BLANK_LINE.length !== end) return head;
  return headAt(raw, afterBlank(lastBlankLineBefore(raw, blank)));
}

function afterBlank(blank: number): number {
  return blank < 0 ? 0 : blank + BLANK_LINE.length;
}

/** Where the last `\r\n\r\n` that ends at or before `end` starts; -1 when there is none. */
function lastBlankLineBefore(raw: Buffer, end: number): number {
  return end < BLANK_LINE.length ? -1 : raw.lastIndexOf(BLANK_LINE, end - BLANK_LINE.length);
}

/** The head that starts at `start`, or null when no request line is there. */
function headAt(raw: Buffer, start: number): FailedHead | null {
  const headEnd = raw.indexOf(BLANK_LINE, start);
  const lines = raw.subarray(start, headEnd < 0 ? raw.length : headEnd).toString('latin1').split('\r\n');
  const line = REQUEST_LINE.exec(lines[0] ?? '');
  if (!line) return null;
  const headers: FailedHead['headers'] = {};
  for (const h of lines.slice(1)) {
    const colon = h.indexOf(':');
    if (colon <= 0) continue;
    const name = h.slice(0, colon).toLowerCase();
    if ((name === 'host' || name === 'user-agent') && headers[name] === undefined) headers[name] = printable(h.slice(colon + 1).trim(), MAX_VALUE);
  }
  return { method: line[1] as string, url: (line[2] as string).slice(0, MAX_TARGET), headers };
}

const UNPRINTABLE = /[^\x20-\x7e]/g;

function printable(s: string, max: number): string {
  return s.slice(0, max).replace(UNPRINTABLE, '?');
}

/** Answers on a raw socket with a bare status and closes it (no request object exists to answer). */
export function endWithStatus(socket: Socket, status: number): void {
  socket.end(`${statusLine(status)}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
}
