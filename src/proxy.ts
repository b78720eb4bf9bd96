/**
 * forward and deny: the two ways a request ends. deny() is the only place that writes a failure
 * response (STYLE.md §6); forward() streams a request to Exchange and its answer back.
 *
 * Forwarding runs on undici (ARCHITECTURE.md: 2.5× less CPU per request than http-proxy, and
 * aborts the upstream request when the client goes away). Each client connection gets its own
 * upstream connection (`Client`, pipelining 1), destroyed with it: NTLM authenticates the TCP
 * connection, and a shared pool hands one user's session to another.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isIP, type Socket } from 'node:net';
import { pipeline, Transform } from 'node:stream';
import { buildConnector, Client, type Dispatcher } from 'undici';
import type { AccessRecord } from './access-log.js';
import type { Config } from './config/load.js';
import { DENY_STATUS, type DenyReason } from './errors.js';
import type { ServiceDefaults } from './services.js';

// Hop-by-hop headers (RFC 9110 §7.6.1) plus what undici refuses (`expect`) and what the gateway
// owns: a client must not be able to claim its own X-Forwarded-For.
const REQUEST_DROP: ReadonlySet<string> = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding',
  'upgrade', 'http2-settings', 'expect', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded',
  'x-real-ip',
]);

/** Response headers that name Exchange's internal servers (and its software), removed by default. */
export const HIDDEN_RESPONSE_HEADERS: ReadonlySet<string> = new Set([
  'x-feserver', 'x-beserver', 'x-calculatedbetarget', 'x-diaginfo', 'x-febeserver', 'x-fefqdn', 'x-feproxyinfo',
  'x-feefzinfo', 'x-targetbeserver', 'x-beserverexception', 'x-backendhttpstatus', 'x-proxy-backendserverstatus',
  'x-proxy-routingcorrectness', 'x-powered-by', 'x-aspnet-version', 'x-owa-diagnosticsinfo', 'x-serverapplication-diag',
]);

/** Request headers forwarded exactly once, from Node's parsed view. */
const SINGLE: ReadonlySet<string> = new Set(['host', 'content-length']);

const RESPONSE_DROP: ReadonlySet<string> = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'http2-settings',
  ...HIDDEN_RESPONSE_HEADERS,
]);

const STATUS_TEXT: Readonly<Record<number, string>> = {
  400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 413: 'Content Too Large',
  421: 'Misdirected Request', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout',
};

/** How much longer than the upstream side the client side of a request may stay silent. */
const CLIENT_IDLE_GRACE_MS = 10_000;

/** Seconds a client is told to wait after a 503. */
const RETRY_AFTER_SECONDS = 10;

/** Options of a denial's response. */
export interface DenyOptions {
  /** For 401: the Basic realm. */
  readonly realm?: string;
  readonly detail?: string;
}

/**
 * Answers a request with the status its reason calls for (errors.ts) and records why. Closes the
 * connection when the request body was not read, so a denied upload is never read to its end.
 */
export function deny(req: IncomingMessage, res: ServerResponse, record: AccessRecord, reason: DenyReason, opts: DenyOptions = {}): void {
  record.decision = 'deny';
  fail(req, res, record, reason, opts);
}

/**
 * Writes the response for a reason without touching the record's decision: an allowed request
 * that Exchange failed (502/504) keeps `decision: allow`.
 */
export function fail(req: IncomingMessage, res: ServerResponse, record: AccessRecord, reason: DenyReason, opts: DenyOptions = {}): void {
  record.reason = reason;
  if (opts.detail !== undefined) record.detail = opts.detail;
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const status = DENY_STATUS[reason];
  const body = `${status} ${STATUS_TEXT[status] ?? ''}\n`;
  const headers: Record<string, string | number> = {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  };
  if (status === 401) headers['www-authenticate'] = `Basic realm="${opts.realm ?? 'exgate'}", charset="UTF-8"`;
  if (status === 503) headers['retry-after'] = RETRY_AFTER_SECONDS;
  if (status === 400 || status === 421 || status === 413 || hasUnreadBody(req)) {
    headers.connection = 'close';
    res.shouldKeepAlive = false;
  }
  res.writeHead(status, headers);
  res.end(req.method === 'HEAD' ? undefined : body);
}

function hasUnreadBody(req: IncomingMessage): boolean {
  if (req.complete) return false;
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/** The declared body length, or null for a chunked body; 413 when it exceeds the limit. */
export function declaredBodyTooLarge(req: IncomingMessage, settings: ServiceDefaults): boolean {
  const length = req.headers['content-length'];
  return settings.maxBodyBytes > 0 && length !== undefined && Number(length) > settings.maxBodyBytes;
}

/** Pinned upstream connections: one undici Client per client socket. */
export class Upstream {
  readonly #clients = new WeakMap<Socket, Client>();
  readonly #options: Client.Options;
  /** The TLS name to send and verify on every request (null for plain http). */
  readonly servername: string | null;

  constructor(readonly config: Config['upstream'], keepAliveTimeoutMs: number) {
    const https = config.url.protocol === 'https:';
    this.servername = https && !isIP(config.servername) ? config.servername : null;
    const connector = buildConnector({
      timeout: config.connectTimeoutMs,
      keepAlive: true,                      // 59-minute-silent ActiveSync sockets must survive internal firewalls
      ...(https ? {
        rejectUnauthorized: !config.insecureSkipVerify,
        ...(config.ca ? { ca: config.ca } : {}),
        minVersion: 'TLSv1.2' as const,
        ALPNProtocols: ['http/1.1'],
      } : {}),
    });
    const servername = this.servername ?? undefined;
    this.#options = {
      pipelining: 1,
      keepAliveTimeout: keepAliveTimeoutMs,
      keepAliveMaxTimeout: keepAliveTimeoutMs,
      // undici would otherwise take the TLS servername from each request's Host header, which the
      // client controls (undici 7 lib/core/request.js: `servername || getServerName(this.host)`).
      // Exchange's certificate is always checked against the configured name.
      connect: (opts, callback) => connector({ ...opts, servername }, callback),
    };
  }

  /** The upstream connection of this client connection; made on first use, destroyed with it. */
  clientFor(socket: Socket): Client {
    let client = this.#clients.get(socket);
    if (!client) {
      const c = new Client(this.config.origin, this.#options);
      c.on('connectionError', () => {});      // reported per request through the handler
      socket.once('close', () => { c.destroy().catch(() => {}); });
      this.#clients.set(socket, c);
      client = c;
    }
    return client;
  }
}

/**
 * Streams the request to Exchange and the response back, with no buffering either way.
 * A client abort aborts the upstream request; an upstream cut ends the client response.
 */
export function forward(req: IncomingMessage, res: ServerResponse, record: AccessRecord, settings: ServiceDefaults, upstream: Upstream): void {
  const idleMs = settings.idleTimeoutSeconds * 1000;
  // The client side waits a little longer than the upstream side, so that a silent Exchange is
  // answered with 504 before the client connection itself is dropped as idle.
  req.socket.setTimeout(idleMs + CLIENT_IDLE_GRACE_MS);
  const started = performance.now();
  const body = requestBody(req, settings, record);
  if (req.headers.expect?.toLowerCase() === '100-continue') res.writeContinue();
  const relay = new ResponseRelay(res, record, started);
  upstream.clientFor(req.socket).dispatch({
    origin: upstream.config.origin,
    path: req.url ?? '/',
    method: req.method ?? 'GET',
    headers: requestHeaders(req),
    body,
    // Per-request limits sized to the service: an ActiveSync Ping answers only after its heartbeat.
    headersTimeout: idleMs,
    bodyTimeout: idleMs,
  }, relay);
  res.once('close', () => relay.clientClosed());
}

/** The request body as undici should read it: the request stream itself, counted; null when none. */
function requestBody(req: IncomingMessage, settings: ServiceDefaults, record: AccessRecord): IncomingMessage | Transform | null {
  const length = req.headers['content-length'];
  const chunked = req.headers['transfer-encoding'] !== undefined;
  if (!chunked && (length === undefined || length === '0')) return null;
  if (!chunked) {
    // Counted when the body is complete, not with a 'data' listener: one would switch the stream
    // to flowing mode before undici reads it, and the body would be lost.
    req.once('end', () => { record.bytesIn = Number(length); });
    return req;
  }
  // A chunked body has no declared length: count it and cut it at the service's limit.
  const limit = settings.maxBodyBytes;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      record.bytesIn += chunk.length;
      if (limit > 0 && record.bytesIn > limit) {
        done(Object.assign(new Error('request body over the service limit'), { code: 'EXGATE_TOO_LARGE' }));
        return;
      }
      done(null, chunk);
    },
  });
  pipeline(req, counter, () => {});   // a client abort mid-upload errors the body undici reads
  return counter;
}

function requestHeaders(req: IncomingMessage): string[] {
  const raw = req.rawHeaders;
  const named = connectionTokens(req.headers.connection);
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const lower = name.toLowerCase();
    if (REQUEST_DROP.has(lower) || named?.has(lower) || SINGLE.has(lower)) continue;
    out.push(name, raw[i + 1] as string);
  }
  // Headers that must appear once, taken from Node's parse (it keeps the first Host and rejects
  // conflicting Content-Lengths), never from a client's repeated raw lines.
  if (req.headers.host !== undefined) out.push('Host', req.headers.host);
  const length = req.headers['content-length'];
  if (length !== undefined && length !== '0') out.push('Content-Length', length);
  out.push('X-Forwarded-For', req.socket.remoteAddress ?? '', 'X-Forwarded-Proto', 'https');
  return out;
}

function connectionTokens(value: string | undefined): Set<string> | null {
  if (!value) return null;
  const v = value.toLowerCase();
  if (v === 'keep-alive' || v === 'close') return null;
  return new Set(value.split(',').map((t) => t.trim().toLowerCase()).filter(Boolean));
}

/** Relays one upstream response to the client, with backpressure both ways. */
class ResponseRelay implements Dispatcher.DispatchHandler {
  #controller: Dispatcher.DispatchController | null = null;
  #done = false;

  constructor(private readonly res: ServerResponse, private readonly record: AccessRecord, private readonly started: number) {}

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.res.destroyed) controller.abort(new Error('client went away'));
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, _headers: unknown, statusMessage?: string): void {
    if (statusCode < 200) return;                   // 1xx: Node writes its own 100 Continue
    this.record.upstreamMs = Math.round(performance.now() - this.started);
    const headers = responseHeaders(controller.rawHeaders as Buffer[] | undefined);
    this.res.writeHead(statusCode, statusMessage || undefined, headers);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.record.bytesOut += chunk.length;
    if (!this.res.write(chunk)) {
      controller.pause();
      this.res.once('drain', () => controller.resume());
    }
  }

  onResponseEnd(): void {
    this.#done = true;
    this.res.end();
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    this.#done = true;
    if (this.res.destroyed) return;                 // the client left first; nothing to tell
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EXGATE_TOO_LARGE') {
      deny(this.res.req, this.res, this.record, 'too-large', { detail: err.message });
      return;
    }
    const timeout = code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT';
    fail(this.res.req, this.res, this.record, timeout ? 'upstream-timeout' : 'upstream-error', { detail: `${code ?? err.name}: ${err.message}` });
  }

  /** The client response closed: if the upstream exchange is still running, abort it. */
  clientClosed(): void {
    if (!this.#done && this.#controller && !this.#controller.aborted) {
      this.#controller.abort(new Error('client went away'));
    }
  }
}

function responseHeaders(raw: Buffer[] | undefined): string[] {
  const out: string[] = [];
  if (!raw) return out;
  let named: Set<string> | null = null;
  for (let i = 0; i < raw.length; i += 2) {
    if ((raw[i] as Buffer).toString('latin1').toLowerCase() === 'connection') named = connectionTokens((raw[i + 1] as Buffer).toString('latin1'));
  }
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as Buffer).toString('latin1');
    const lower = name.toLowerCase();
    if (RESPONSE_DROP.has(lower) || named?.has(lower)) continue;
    out.push(name, (raw[i + 1] as Buffer).toString('latin1'));
  }
  return out;
}
