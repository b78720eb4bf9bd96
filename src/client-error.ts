/**
 * Requests Node's HTTP parser refuses before they become a `request`: it has a fixed method
 * table, so Outlook Anywhere's RPC_IN_DATA / RPC_OUT_DATA end here as HPE_INVALID_METHOD
 * (research/node-proxy.md §1.1). They are answered with a status line and logged like any other
 * request (service `rpc`), and never forwarded. Other parser errors get 400/408/431/501.
 *
 * `err.rawPacket` is the raw read chunk: it may hold earlier pipelined requests and always holds
 * the Authorization header. Only the failing request line and its Host header are read from it.
 */
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { newAccessRecord, type AccessRecord } from './access-log.js';
import { authorizeAnonymous } from './authorize.js';
import { classify } from './classify.js';
import { DENY_STATUS, statusLine, type DenyReason } from './errors.js';
import { RPC_METHODS } from './services.js';
import type { State } from './state.js';

interface ParserError extends Error {
  code?: string;
  rawPacket?: Buffer;
  bytesParsed?: number;
}

/** The head of the request the parser failed on: request line and Host only. */
interface FailedHead {
  readonly method: string;
  readonly target: string;
  readonly host: string | undefined;
}

/** Handles a `clientError`: answers, logs one access record, closes the connection. */
export function handleClientError(err: ParserError, socket: Socket, state: State, write: (r: AccessRecord) => void): void {
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  const head = failedHead(err);
  const record = newAccessRecord(socket, { method: head?.method ?? '', url: head?.target ?? '', headers: head?.host ? { host: head.host } : {} });
  const [status, reason, detail] = verdict(err, head, socket, state, record);
  record.status = status;
  record.reason = reason;
  record.detail = detail;
  endWithStatus(socket, status);
  write(record);
}

function verdict(err: ParserError, head: FailedHead | null, socket: Socket, state: State, record: AccessRecord): [number, DenyReason, string] {
  if (err.code === 'HPE_HEADER_OVERFLOW') return [431, 'bad-request', 'request headers too large'];
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') return [408, 'bad-request', 'request headers not received in time'];
  if (err.code !== 'HPE_INVALID_METHOD' || !head || !RPC_METHODS.has(head.method)) {
    return [err.code === 'HPE_INVALID_METHOD' ? 501 : 400, 'bad-request', `HTTP parser: ${err.code ?? 'error'}`];
  }
  const route = classify((socket as TLSSocket).servername, head.host, head.target, state.config.names);
  if (!route.ok) return [DENY_STATUS[route.reason], route.reason, route.detail];
  record.service = route.service;
  if (route.service !== 'rpc') return [400, 'bad-request', `${head.method} outside /rpc/`];
  const decision = authorizeAnonymous('rpc', state.policy);
  if (decision) {
    record.rule = decision.rule;
    return [403, decision.reason, 'Outlook Anywhere (RPC over HTTP) is not allowed'];
  }
  // Allowed, but not at the start of a connection: a tunnel needs a connection of its own.
  return [501, 'bad-request', 'Outlook Anywhere request after other requests on one connection'];
}

/** Finds the request line the parser stopped in (scan back from bytesParsed) and its Host header. */
function failedHead(err: ParserError): FailedHead | null {
  const raw = err.rawPacket;
  if (!raw) return null;
  const at = Math.min(err.bytesParsed ?? 0, raw.length);
  const lineStart = at === 0 ? 0 : raw.lastIndexOf('\r\n', at) + 2;
  const start = lineStart < 2 ? 0 : lineStart;
  const lineEnd = raw.indexOf('\r\n', start);
  const line = raw.subarray(start, lineEnd < 0 ? raw.length : lineEnd).toString('latin1');
  const [method = '', target = ''] = line.split(' ');
  const headEnd = raw.indexOf('\r\n\r\n', start);
  const headers = raw.subarray(lineEnd < 0 ? raw.length : lineEnd + 2, headEnd < 0 ? raw.length : headEnd).toString('latin1');
  let host: string | undefined;
  for (const h of headers.split('\r\n')) {
    if (h.slice(0, 5).toLowerCase() === 'host:') host = h.slice(5).trim();
  }
  return { method: printable(method, 32), target: printable(target, 2048), host: host && printable(host, 256) };
}

function printable(s: string, max: number): string {
  return s.slice(0, max).replace(/[^\x20-\x7e]/g, '?');
}

/** Answers on a raw socket with a bare status and closes it (no request object exists to answer). */
export function endWithStatus(socket: Socket, status: number): void {
  socket.end(`${statusLine(status)}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
}
