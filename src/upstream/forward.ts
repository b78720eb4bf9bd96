/**
 * forward: streams an allowed request to Exchange and its answer back, with no buffering either
 * way, on undici (ARCHITECTURE.md: 2.5× less CPU per request than http-proxy, and it aborts the
 * upstream request when the client goes away). A client abort aborts the upstream request; an
 * upstream cut ends the client response.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline, Transform } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { AccessRecord } from '../pipeline/access-log.js';
import { requestHeaders, responseHeaders } from '../pipeline/headers.js';
import { onClose } from '../pipeline/on-close.js';
import { deny, fail, relayHead } from '../pipeline/respond.js';
import type { AuthFrontEnd, FormsStep } from '../auth/front-ends.js';
import type { Service, ServiceDefaults } from '../pipeline/services.js';
import { isConnectFailure } from './health.js';
import type { Binding, Member } from './pool.js';
import type { Upstream } from './upstream.js';

/** How much longer than the upstream side the client side of a request may stay silent. */
const CLIENT_IDLE_GRACE_MS = 10_000;

/** What forward() needs to know about the request's route. */
export interface Forwarding {
  /** Which protocol's healthy servers may take it. */
  readonly service: Service;
  /** The name the client reached (its Host when it sent none). */
  readonly host: string;
  readonly settings: ServiceDefaults;
  /** Longest silence allowed on this request: the service's idle timeout, or less for short operations. */
  readonly idleMs: number;
  /** How the service's clients authenticate: which of Exchange's challenges pass, and the
   * gateway's own for a 401 from Exchange that has none the client may use. */
  readonly frontEnd: Pick<AuthFrontEnd, 'passes' | 'challenges'>;
  /** Called with Exchange's status once its response starts (NTLM settles a Type 3 with it). */
  readonly onStatus?: ((status: number) => void) | undefined;
  /** Forms: the sign-in form already read, the Authorization to drop, the cookies to add. */
  readonly forms?: FormsStep | undefined;
}

/** Streams the request to Exchange and the response back. */
export function forward(
  req: IncomingMessage,
  res: ServerResponse,
  record: AccessRecord,
  route: Forwarding,
  upstream: Upstream,
): void {
  // The client side waits a little longer than the upstream side, so that a silent Exchange is
  // answered with 504 before the client connection itself is dropped as idle.
  req.socket.setTimeout(route.idleMs + CLIENT_IDLE_GRACE_MS);
  const binding = upstream.bind(req.socket, route.service);
  if (!binding) {
    return fail(req, res, record, 'upstream-unavailable', {
      detail: `no healthy Exchange server for ${route.service}`,
    });
  }
  const body = route.forms?.body ?? requestBody(req, route.settings, record);
  if (route.forms?.body) record.bytesIn = route.forms.body.length;
  // A body the gateway read itself (the sign-in form) had its 100 Continue already (read-body.ts).
  if (req.headers.expect?.toLowerCase() === '100-continue' && !route.forms?.body) res.writeContinue();
  const relay = new ResponseRelay(req, res, record, route, upstream, body);
  relay.send(binding);
  onClose(res, () => relay.clientClosed());
}

/** The request body as undici should read it: the request stream itself, counted; null when none. */
function requestBody(
  req: IncomingMessage,
  settings: ServiceDefaults,
  record: AccessRecord,
): IncomingMessage | Transform | null {
  const length = req.headers['content-length'];
  const chunked = req.headers['transfer-encoding'] !== undefined;
  if (!chunked && (length === undefined || length === '0')) return null;
  if (!chunked) {
    // Counted when the body is complete, not with a 'data' listener: one would switch the stream
    // to flowing mode before undici reads it, and the body would be lost.
    req.once('end', () => {
      record.bytesIn = Number(length);
    });
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
  pipeline(req, counter, () => {}); // a client abort mid-upload errors the body undici reads
  return counter;
}

/** Relays one upstream response to the client, with backpressure both ways. */
class ResponseRelay implements Dispatcher.DispatchHandler {
  #controller: Dispatcher.DispatchController | null = null;
  #done = false;
  readonly #started = performance.now();
  /** The servers tried for this request: a connect failure moves it to the next healthy one. */
  readonly #tried = new Set<Member>();
  #server = '';

  constructor(
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly record: AccessRecord,
    private readonly route: Forwarding,
    private readonly upstream: Upstream,
    private readonly body: IncomingMessage | Transform | Buffer | null,
  ) {}

  /** Dispatches the request on the binding's pinned connection. */
  send(binding: Binding): void {
    this.#tried.add(binding.member);
    this.#server = this.record.upstream = binding.member.server.key;
    binding.client.dispatch(
      {
        origin: binding.member.server.origin,
        servername: binding.member.server.servername,
        path: this.req.url ?? '/',
        method: this.req.method ?? 'GET',
        headers: requestHeaders(this.req, this.route.host, this.record.requestId, {
          authorization: !this.route.forms?.dropAuthorization,
          bodyLength: this.route.forms?.body?.length,
        }),
        body: this.body,
        // Per-request limits sized to the operation: an ActiveSync Ping answers only after its heartbeat.
        headersTimeout: this.route.idleMs,
        bodyTimeout: this.route.idleMs,
      } as Dispatcher.DispatchOptions,
      this,
    );
  }

  /**
   * Connecting failed, so no byte of the request left (undici starts a request only on a connected
   * socket): the next healthy server may take it, within connectTimeoutMs. True when it was sent on.
   */
  #failover(err: Error): boolean {
    if (this.#controller !== null || !isConnectFailure(err) || !this.upstream.checked) return false;
    if (performance.now() - this.#started >= this.upstream.config.connectTimeoutMs) return false;
    const next = this.upstream.bind(this.req.socket, this.route.service, this.#tried);
    if (next) this.send(next);
    return next !== null;
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.res.destroyed) controller.abort(new Error('client went away'));
  }

  onResponseStart(
    controller: Dispatcher.DispatchController,
    statusCode: number,
    _headers: unknown,
    statusMessage?: string,
  ): void {
    if (statusCode < 200) return; // 1xx: Node writes its own 100 Continue
    this.record.upstreamMs = Math.round(performance.now() - this.#started);
    this.upstream.answered();
    // Exchange answered before reading the whole body (a 401, IIS request filtering): the rest of
    // the upload is neither forwarded nor drained, so this connection cannot carry another request.
    if (!this.req.complete) this.res.shouldKeepAlive = false;
    this.route.onStatus?.(statusCode);
    const headers = responseHeaders(controller.rawHeaders as Buffer[] | undefined, statusCode, this.route.frontEnd);
    if (this.route.forms?.answered) this.#formsAnswered(statusCode, headers, this.route.forms.answered);
    relayHead(this.res, statusCode, statusMessage || undefined, headers);
    // Head, body and end of a small response that arrive in one tick leave in one TLS write;
    // a streamed response is uncorked at the end of each tick, so nothing waits.
    this.res.cork();
    this.#uncorkSoon();
  }

  /** Forms: the gateway's cookie joins Exchange's answer; a form Exchange refused is logged as such. */
  #formsAnswered(status: number, headers: string[], answered: NonNullable<FormsStep['answered']>): void {
    const setCookies: string[] = [];
    for (let i = 0; i < headers.length; i += 2)
      if ((headers[i] as string).toLowerCase() === 'set-cookie') setCookies.push(headers[i + 1] as string);
    const added = answered(status, setCookies);
    if (added === null) {
      Object.assign(this.record, {
        decision: 'deny',
        reason: 'bad-credentials',
        detail: 'Exchange refused the sign-in form',
      });
      return;
    }
    for (const cookie of added) headers.push('Set-Cookie', cookie);
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
    if (!this.res.destroyed && this.#failover(err)) return;
    this.#done = true;
    if (this.record.upstreamMs === null) this.route.onStatus?.(0); // no answer: not accepted
    if (this.res.destroyed) return; // the client left first; nothing to tell
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EXGATE_TOO_LARGE') {
      deny(this.req, this.res, this.record, 'too-large', { detail: err.message });
      return;
    }
    const timeout =
      code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT';
    const detail = `${code ?? err.name}: ${err.message}`;
    if (this.upstream.checked && this.#controller === null && isConnectFailure(err)) {
      // Every healthy server was tried (or the connect timeout spent): none can take it.
      return fail(this.req, this.res, this.record, 'upstream-unavailable', { detail: `${this.#server}: ${detail}` });
    }
    if (!timeout) this.upstream.failed(detail, this.#server);
    fail(this.req, this.res, this.record, timeout ? 'upstream-timeout' : 'upstream-error', { detail });
  }

  /** The client response closed: if the upstream exchange is still running, abort it. */
  clientClosed(): void {
    if (!this.#done && this.#controller && !this.#controller.aborted) {
      this.#controller.abort(new Error('client went away'));
    }
  }
}
