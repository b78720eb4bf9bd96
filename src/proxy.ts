/**
 * forward and deny: the two ways a request ends. deny() is the only place that writes a failure
 * response (STYLE.md §6); forward() streams a request to Exchange and its answer back.
 *
 * Forwarding runs on undici (ARCHITECTURE.md: 2.5× less CPU per request than http-proxy, and
 * aborts the upstream request when the client goes away). Each client connection gets its own
 * upstream connection (`Client`, pipelining 1), destroyed with it: NTLM authenticates the TCP
 * connection, and a shared pool hands one user's session to another.
 */
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import { isIP, type Socket } from 'node:net';
import { pipeline, Transform } from 'node:stream';
import type { Logger } from 'pino';
import type { TLSSocket } from 'node:tls';
import { buildConnector, Client, type Dispatcher } from 'undici';
import type { AccessRecord } from './access-log.js';
import type { Config } from './config/load.js';
import { DENY_STATUS, type DenyReason } from './errors.js';
import { requestHeaders, responseHeaders } from './headers.js';
import type { Account } from './directory/directory.js';
import type { AuthMode, ServiceDefaults } from './services.js';

/** How much longer than the upstream side the client side of a request may stay silent. */
const CLIENT_IDLE_GRACE_MS = 10_000;

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
}

/** The Basic challenge of the gateway (INTERFACE.md: `Basic realm="…", charset="UTF-8"`). */
export function basicChallenge(realm: string): string {
  return `Basic realm="${realm}", charset="UTF-8"`;
}

/** The challenges a service's 401 offers: NTLM first where it is on (Windows clients prefer it). */
export function challengesFor(mode: AuthMode, realm: string): readonly string[] {
  if (mode === 'basic') return [basicChallenge(realm)];
  if (mode === 'ntlm') return ['NTLM'];
  return ['NTLM', basicChallenge(realm)];
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
 * that Exchange failed (502/504) keeps `decision: allow`. After the response has started, all it
 * can do is cut the connection.
 */
export function fail(req: IncomingMessage, res: ServerResponse, record: AccessRecord, reason: DenyReason, opts: DenyOptions = {}): void {
  record.reason = reason;
  if (opts.detail !== undefined) record.detail = opts.detail;
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const status = (reason === 'bad-request' || reason === 'gateway-lockout') && opts.status ? opts.status : DENY_STATUS[reason];
  const body = `${status} ${STATUS_CODES[status] ?? ''}\n`;
  const headers: Record<string, string | number | string[]> = {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  };
  if (status === 401) headers['www-authenticate'] = [...(opts.challenges ?? [basicChallenge('exgate')])];
  if (status === 503) headers['retry-after'] = RETRY_AFTER_SECONDS;
  if (status === 429) headers['retry-after'] = opts.retryAfterSeconds ?? RETRY_AFTER_SECONDS;
  // A request without a body is whole even while its 'request' event runs (req.complete is set after).
  const unread = !req.complete && (req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0);
  const drain = unread && drainable(req);
  if (CLOSES.has(status) || status >= 500 || (unread && !drain)) {
    headers.connection = 'close';
    res.shouldKeepAlive = false;
  } else if (drain) {
    drainBody(req);
  }
  res.writeHead(status, headers);
  res.end(req.method === 'HEAD' ? undefined : body);
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
export function respond(res: ServerResponse, record: AccessRecord, contentType: string, body: string, detail: string): void {
  record.decision = 'allow';
  record.reason = 'allowed';
  record.detail = detail;
  record.bytesOut = Buffer.byteLength(body);
  res.writeHead(200, { 'content-type': contentType, 'content-length': record.bytesOut, 'cache-control': 'no-store' });
  res.end(body);
}

/** True when the declared body length exceeds the service's limit (→ 413 before anything else). */
export function declaredBodyTooLarge(req: IncomingMessage, settings: ServiceDefaults): boolean {
  const length = req.headers['content-length'];
  return settings.maxBodyBytes > 0 && length !== undefined && Number(length) > settings.maxBodyBytes;
}

/**
 * Pinned upstream connections: one undici Client per client socket, and the account Exchange
 * accepted on it by NTLM (a session lives exactly as long as its upstream connection).
 */
export class Upstream {
  readonly #clients = new WeakMap<Socket, Client>();
  readonly #sessions = new WeakMap<Socket, Account>();
  readonly #options: Client.Options;
  /** The name every request is sent under; see the connector below. */
  readonly servername: string;

  /** Causes of 502 already in the operational log; cleared when Exchange answers again. */
  readonly #causes = new Set<string>();

  constructor(readonly config: Config['upstream'], keepAliveTimeoutMs: number, private readonly log?: Pick<Logger, 'warn'>) {
    const https = config.url.protocol === 'https:';
    this.servername = config.servername;
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
    // undici takes each request's TLS servername from its Host header, which the client controls
    // (undici 7 lib/core/request.js: `servername || getServerName(this.host)`), and drops the
    // connection when it changes. The connector pins SNI and the verified name to the config
    // (none for an IP address), and forward() gives every request the same servername.
    const sni = isIP(config.servername) ? undefined : config.servername;
    this.#options = {
      pipelining: 1,
      keepAliveTimeout: keepAliveTimeoutMs,
      keepAliveMaxTimeout: keepAliveTimeoutMs,
      connect: (opts, callback) => connector({ ...opts, servername: sni }, (...args) => {
        if (args[1] && 'getPeerCertificate' in args[1]) this.#notePeer(args[1] as TLSSocket);   // the expiry gauge
        callback(...args);
      }),
    };
  }

  /** The upstream connection of this client connection; made on first use, destroyed with it. */
  clientFor(socket: Socket): Client {
    let client = this.#clients.get(socket);
    if (!client) {
      const c = new Client(this.config.origin, this.#options);
      c.on('connectionError', () => {});      // reported per request through the handler
      // A new upstream connection is a new NTLM context: the client must authenticate again.
      c.on('disconnect', () => { this.#sessions.delete(socket); });
      socket.once('close', () => { c.destroy().catch(() => {}); });
      this.#clients.set(socket, c);
      client = c;
    }
    return client;
  }

  /** Resolves when Exchange answers an HTTP request on a connection of its own (any status). */
  async probe(timeoutMs = 5000): Promise<void> {
    const client = new Client(this.config.origin, { ...this.#options, headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
    try {
      const res = await client.request({ path: '/owa/healthcheck.htm', method: 'GET', headers: { host: this.servername } });
      await res.body.dump();
    } finally {
      await client.destroy().catch(() => {});
    }
  }

  /** Logs why Exchange cannot be reached once per distinct cause, not once per request. */
  failed(cause: string): void {
    if (this.#causes.has(cause)) return;
    this.#causes.add(cause);
    this.log?.warn({ upstream: this.config.origin, cause }, 'cannot reach Exchange: allowed requests get 502 (exgate check says why)');
  }

  answered(): void {
    if (this.#causes.size > 0) this.#causes.clear();
  }

  /** notAfter of Exchange's certificate as last seen on a connection (probe or request); null before one. */
  peerNotAfter: Date | null = null;

  #notePeer(socket: TLSSocket): void {
    const validTo = socket.getPeerCertificate().valid_to;
    if (validTo) this.peerNotAfter = new Date(validTo);
  }

  /** The account Exchange accepted by NTLM on this client connection, if any. */
  session(socket: Socket): Account | null {
    return this.#sessions.get(socket) ?? null;
  }

  setSession(socket: Socket, account: Account | null): void {
    if (account) this.#sessions.set(socket, account);
    else this.#sessions.delete(socket);
  }
}

/** What forward() needs to know about the request's route. */
export interface Forwarding {
  /** The name the client reached (its Host when it sent none). */
  readonly host: string;
  readonly settings: ServiceDefaults;
  /** Longest silence allowed on this request: the service's idle timeout, or less for short operations. */
  readonly idleMs: number;
  /** How the service's clients authenticate: decides which of Exchange's challenges pass. */
  readonly auth: AuthMode;
  /** The gateway's own challenges, for a 401 from Exchange that has none the client may use. */
  readonly challenges: readonly string[];
  /** Called with Exchange's status once its response starts (NTLM settles a Type 3 with it). */
  readonly onStatus?: ((status: number) => void) | undefined;
}

/**
 * Streams the request to Exchange and the response back, with no buffering either way.
 * A client abort aborts the upstream request; an upstream cut ends the client response.
 */
export function forward(req: IncomingMessage, res: ServerResponse, record: AccessRecord, route: Forwarding, upstream: Upstream): void {
  // The client side waits a little longer than the upstream side, so that a silent Exchange is
  // answered with 504 before the client connection itself is dropped as idle.
  req.socket.setTimeout(route.idleMs + CLIENT_IDLE_GRACE_MS);
  const body = requestBody(req, route.settings, record);
  if (req.headers.expect?.toLowerCase() === '100-continue') res.writeContinue();
  const relay = new ResponseRelay(req, res, record, route, upstream);
  upstream.clientFor(req.socket).dispatch({
    origin: upstream.config.origin,
    servername: upstream.servername,
    path: req.url ?? '/',
    method: req.method ?? 'GET',
    headers: requestHeaders(req, route.host, record.requestId),
    body,
    // Per-request limits sized to the operation: an ActiveSync Ping answers only after its heartbeat.
    headersTimeout: route.idleMs,
    bodyTimeout: route.idleMs,
  } as Dispatcher.DispatchOptions, relay);
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

/** Relays one upstream response to the client, with backpressure both ways. */
class ResponseRelay implements Dispatcher.DispatchHandler {
  #controller: Dispatcher.DispatchController | null = null;
  #done = false;
  readonly #started = performance.now();

  constructor(
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly record: AccessRecord,
    private readonly route: Forwarding,
    private readonly upstream: Upstream,
  ) {}

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.res.destroyed) controller.abort(new Error('client went away'));
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, _headers: unknown, statusMessage?: string): void {
    if (statusCode < 200) return;                   // 1xx: Node writes its own 100 Continue
    this.record.upstreamMs = Math.round(performance.now() - this.#started);
    this.upstream.answered();
    // Exchange answered before reading the whole body (a 401, IIS request filtering): the rest of
    // the upload is neither forwarded nor drained, so this connection cannot carry another request.
    if (!this.req.complete) this.res.shouldKeepAlive = false;
    this.route.onStatus?.(statusCode);
    const headers = responseHeaders(controller.rawHeaders as Buffer[] | undefined, statusCode, this.route.auth, this.route.challenges);
    this.res.writeHead(statusCode, statusMessage || undefined, headers);
    // Head, body and end of a small response that arrive in one tick leave in one TLS write;
    // a streamed response is uncorked at the end of each tick, so nothing waits.
    this.res.cork();
    this.#uncorkSoon();
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

  #uncorkScheduled = false;

  #uncorkSoon(): void {
    if (this.#uncorkScheduled) return;
    this.#uncorkScheduled = true;
    process.nextTick(() => {
      this.#uncorkScheduled = false;
      if (this.res.writableCorked > 0) this.res.uncork();
    });
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    this.#done = true;
    if (this.record.upstreamMs === null) this.route.onStatus?.(0);   // no answer: not accepted
    if (this.res.destroyed) return;                 // the client left first; nothing to tell
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EXGATE_TOO_LARGE') {
      deny(this.req, this.res, this.record, 'too-large', { detail: err.message });
      return;
    }
    const timeout = code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT';
    if (!timeout) this.upstream.failed(`${code ?? err.name}: ${err.message}`);
    fail(this.req, this.res, this.record, timeout ? 'upstream-timeout' : 'upstream-error', { detail: `${code ?? err.name}: ${err.message}` });
  }

  /** The client response closed: if the upstream exchange is still running, abort it. */
  clientClosed(): void {
    if (!this.#done && this.#controller && !this.#controller.aborted) {
      this.#controller.abort(new Error('client went away'));
    }
  }
}
