/**
 * Requests Node's HTTP parser refuses before they become a `request` (Outlook Anywhere's
 * RPC_IN_DATA / RPC_OUT_DATA among them, research/node-proxy.md §1.1): answered on the raw socket,
 * logged, never forwarded. A raw answer waits for the responses owed to earlier pipelined requests
 * (OwedResponses), and HPE_PAUSED, Node's own fault, ends the connection without inventing a 400.
 */
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { newAccessRecord, type AccessRecord, type RequestHead } from '../pipeline/access-log.js';
import { authorizeAnonymous } from '../pipeline/authorize.js';
import { classifyRpc } from '../pipeline/classify.js';
import { DENY_STATUS, type DenyReason } from '../errors.js';
import { onClose } from '../pipeline/on-close.js';
import { refuseSocket } from '../pipeline/respond.js';
import { RPC_METHODS } from '../pipeline/services.js';
import type { State } from '../runtime/state.js';

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

/** What handleClientError needs from the gateway. */
export interface ClientErrorContext {
  readonly state: State;
  readonly owed: OwedResponses;
  /** Writes an access record. */
  write(record: AccessRecord): void;
  /** Tells the operational log about a connection ended for a reason that is not the client's. */
  note(socket: Socket, message: string): void;
}

/**
 * Handles a `clientError`: once the responses owed to earlier pipelined requests are written,
 * answers, logs one access record and closes the connection.
 *
 * `err.rawPacket` is the raw read chunk, not the request: it may hold earlier pipelined requests,
 * may start in the middle of the failing head (a head longer than one TLS record), and always
 * holds the Authorization header. Only the failing request line, Host and User-Agent are read.
 */
export function handleClientError(err: ParserError, socket: Socket, ctx: ClientErrorContext): void {
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  if (ctx.owed.closing(socket)) return; // a later chunk of a connection already ending
  if (err.code === 'HPE_PAUSED') {
    // Node paused its parser for backpressure, yet TLS handed it the next decrypted record, which
    // is lost (reproduced: test/integration/pipelining.test.ts). Nothing after it can be parsed
    // safely; answer what was read, then close, as nginx does at keepalive_requests: a pipelining
    // client retries what was not answered (RFC 9112 §9.3.2).
    ctx.owed.closeAfterOwed(socket, () => socket.end());
    ctx.note(socket, 'pipelined requests arrived faster than Node could take them: closed after the answered ones');
    return;
  }
  const head = err.rawPacket ? failedHead(err.rawPacket, err.bytesParsed ?? 0) : null;
  const record = newAccessRecord(socket, head ?? { headers: {} });
  const [status, reason, detail] = verdict(err, head, socket, ctx.state, record);
  record.reason = reason;
  record.detail = detail;
  ctx.owed.answerAfterOwed(socket, () => answerRaw(socket, status, record, ctx.write));
}

/**
 * Per connection, the responses Node was asked for and has not closed yet. Node writes the
 * responses to pipelined requests in order (RFC 9112 §9.3.2); a raw socket.write() would overtake
 * the ones still queued, so a raw answer waits for them. Once a connection is closing, a request
 * Node still parses on it (after HPE_PAUSED its parser resumes mid-stream) is never served.
 */
export class OwedResponses {
  readonly #open = new WeakMap<Socket, Set<ServerResponse>>();
  readonly #closing = new WeakMap<Socket, () => void>();

  /**
   * Counts a response owed on its connection. False when the request must not be served: the
   * connection is closing, or an earlier response will close it (RFC 9112 §9.6: no further
   * requests are processed; its answer could never be sent).
   */
  add(socket: Socket, res: ServerResponse): boolean {
    if (this.#closing.has(socket)) return false;
    let open = this.#open.get(socket);
    if (!open) this.#open.set(socket, (open = new Set()));
    for (const earlier of open) if (!earlier.shouldKeepAlive) return false;
    open.add(res);
    onClose(res, () => {
      open.delete(res);
      // After the response's other 'close' listeners: its access record is written first.
      if (open.size === 0) process.nextTick(() => this.#closing.get(socket)?.());
    });
    return true;
  }

  closing(socket: Socket): boolean {
    return this.#closing.has(socket);
  }

  /** Marks the connection closing; runs `answer` once every response owed on it has closed (or the socket has). */
  answerAfterOwed(socket: Socket, answer: () => void): void {
    if (this.#closing.has(socket)) return; // the first answer on a connection is its last
    let done = false;
    const once = () => {
      if (done) return;
      done = true;
      answer();
    };
    this.#closing.set(socket, once);
    socket.once('close', once); // Node never closes a queued response it aborts
    if ((this.#open.get(socket)?.size ?? 0) === 0) once();
  }

  /** As answerAfterOwed, and the last owed response says `Connection: close` if it still can (RFC 9112 §9.6). */
  closeAfterOwed(socket: Socket, close: () => void): void {
    const last = [...(this.#open.get(socket) ?? [])].at(-1);
    if (last && !last.headersSent) last.shouldKeepAlive = false;
    this.answerAfterOwed(socket, close);
  }
}

function verdict(
  err: ParserError,
  head: FailedHead | null,
  socket: Socket,
  state: State,
  record: AccessRecord,
): Verdict {
  if (err.code === 'HPE_HEADER_OVERFLOW') return [431, 'bad-request', 'request headers too large'];
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') return [408, 'bad-request', 'request headers not received in time'];
  if (err.code !== 'HPE_INVALID_METHOD' || !head || !RPC_METHODS.has(head.method)) {
    const why = err.reason ? ` (${printable(err.reason, 100)})` : '';
    return [err.code === 'HPE_INVALID_METHOD' ? 501 : 400, 'bad-request', `HTTP parser: ${err.code ?? 'error'}${why}`];
  }
  // Allowed, but not at the start of a connection (where rpc-tunnel.ts peeks): a tunnel needs a
  // connection of its own.
  return (
    rpcPrecheck((socket as TLSSocket).servername, head, state, record) ?? [
      501,
      'bad-request',
      'Outlook Anywhere request after other requests on one connection',
    ]
  );
}

/**
 * What an RPC_IN_DATA / RPC_OUT_DATA request gets before credentials are asked: these methods are
 * the rpc service wherever they point (INTERFACE.md), so the policy answers first (403 when rpc is
 * denied to everyone), and one outside /rpc/ is never forwarded, whoever asks (400). Null when the
 * request may go on to authentication. Sets the record's service and rule.
 */
export function rpcPrecheck(
  servername: string | false | null | undefined,
  head: RpcRequestLine,
  state: State,
  record: AccessRecord,
): Verdict | null {
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

/**
 * The framing an Outlook Anywhere request must have before anything else: exactly one
 * Content-Length (the tunnel relays exactly that many bytes) and no Transfer-Encoding; `Expect`
 * only `100-continue` (answered once allowed). Null when it is fine.
 */
export function rpcFraming(
  rawHeaders: readonly string[],
  headers: { readonly expect?: string | undefined; readonly 'content-length'?: string | undefined },
): Verdict | null {
  if (rpcBodyLength(rawHeaders, headers) === null) {
    return [400, 'bad-request', 'an RPC request needs exactly one Content-Length and no Transfer-Encoding'];
  }
  if (headers.expect !== undefined && headers.expect.toLowerCase() !== '100-continue')
    return [417, 'bad-request', 'unsupported Expect'];
  return null;
}

/** The declared body length of an RPC request: exactly one Content-Length, no Transfer-Encoding; else null. */
export function rpcBodyLength(
  rawHeaders: readonly string[],
  headers: { readonly 'content-length'?: string | undefined },
): number | null {
  let lengths = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = (rawHeaders[i] as string).toLowerCase();
    if (name === 'transfer-encoding') return null;
    if (name === 'content-length') lengths++;
  }
  const value = headers['content-length'];
  if (lengths !== 1 || value === undefined || !/^\d{1,10}$/.test(value)) return null;
  return Number(value);
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
  const lines = raw
    .subarray(start, headEnd < 0 ? raw.length : headEnd)
    .toString('latin1')
    .split('\r\n');
  const line = REQUEST_LINE.exec(lines[0] ?? '');
  if (!line) return null;
  const headers: FailedHead['headers'] = {};
  for (const h of lines.slice(1)) {
    const colon = h.indexOf(':');
    if (colon <= 0) continue;
    const name = h.slice(0, colon).toLowerCase();
    if ((name === 'host' || name === 'user-agent') && headers[name] === undefined)
      headers[name] = printable(h.slice(colon + 1).trim(), MAX_VALUE);
  }
  return { method: line[1] as string, url: (line[2] as string).slice(0, MAX_TARGET), headers };
}

const UNPRINTABLE = /[^\x20-\x7e]/g;

function printable(s: string, max: number): string {
  return s.slice(0, max).replace(UNPRINTABLE, '?');
}

/** Ends the connection with the refusal (respond.ts) and writes its record (499: the client left first). */
export function answerRaw(
  socket: Socket,
  status: number,
  record: AccessRecord,
  write: (r: AccessRecord) => void,
): void {
  if (socket.writable) refuseSocket(socket, record, record.reason as DenyReason, { status, keepDecision: true });
  else {
    record.status = 499;
    socket.destroy();
  }
  write(record);
}
