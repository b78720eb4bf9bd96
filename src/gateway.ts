/**
 * The gateway: a TLS listener, Node's HTTP server behind it, and handle(), the pipeline every
 * request takes. handle() is the table of contents of a request:
 *
 *   classify → (refuse before asking for credentials) → authenticate → authorize → forward | deny
 *
 * and one access record, written when the response closes. Each stage returns a value and the
 * pipeline branches on it; deny() in proxy.ts writes every refusal.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Server as TlsServer, TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { activeSyncCommand, newAccessRecord, type AccessRecord } from './access-log.js';
import { authorize, authorizeAnonymous } from './authorize.js';
import { classify } from './classify.js';
import { handleClientError } from './client-error.js';
import { declaredBodyTooLarge, deny, fail, forward } from './proxy.js';
import type { State } from './state.js';
import { createTlsServer, type TlsMaterial } from './tls.js';

/** Where the gateway writes: the access log and the operational log. */
export interface GatewayLogs {
  readonly access: Logger;
  readonly app: Logger;
}

/** The pipeline. `state` is read once per request, so a reload never splits a request in two. */
export async function handle(req: IncomingMessage, res: ServerResponse, state: State, logs: GatewayLogs): Promise<void> {
  const record = newAccessRecord(req);
  const started = performance.now();
  res.once('close', () => writeRecord(logs.access, record, res, started));
  try {
    const route = classify((req.socket as TLSSocket).servername, req.headers.host, req.url ?? '', state.config.names);
    if (!route.ok) return deny(req, res, record, route.reason, { detail: route.detail });
    record.service = route.service;
    if (route.service === 'activesync') record.operation = activeSyncCommand(req.url ?? '');
    const service = state.config.services[route.service];
    if (declaredBodyTooLarge(req, service)) return deny(req, res, record, 'too-large', { detail: `limit ${service.maxBodyBytes} bytes` });

    const refused = authorizeAnonymous(route.service, state.policy);
    if (refused) {
      record.rule = refused.rule;
      return deny(req, res, record, refused.reason);
    }

    const auth = await state.authenticator.authenticate(req.headers.authorization, state.policy.groupDns);
    record.user = auth.ok ? auth.identity.user : auth.user;
    if (!auth.ok) return deny(req, res, record, auth.reason, { realm: state.realm, detail: auth.detail });
    record.cache = auth.cache;

    const decision = authorize(route.service, auth.identity, state.policy);
    record.rule = decision.rule;
    if (!decision.allow) return deny(req, res, record, decision.reason);

    record.decision = 'allow';
    record.reason = decision.reason;
    if (res.destroyed) return;                      // the client left while the directory answered
    forward(req, res, record, service, state.upstream);
  } catch (err) {
    logs.app.error({ err, path: record.path }, 'internal error while handling a request');
    fail(req, res, record, 'upstream-error', { detail: 'internal error' });
  }
}

function writeRecord(access: Logger, record: AccessRecord, res: ServerResponse, started: number): void {
  record.status = res.headersSent ? res.statusCode : 499;
  record.durationMs = Math.round(performance.now() - started);
  access.info(record);
}

/** A running gateway: TLS listener → HTTP server → handle(). */
export class Gateway {
  #state: State;
  readonly tlsServer: TlsServer;
  readonly httpServer: HttpServer;
  readonly #sockets = new Set<Socket>();

  constructor(state: State, material: TlsMaterial, private readonly logs: GatewayLogs) {
    this.#state = state;
    const { http, tls } = state.config;
    this.httpServer = createHttpServer({
      requestTimeout: 0,                       // Node's 300 s default also cuts long uploads
      headersTimeout: http.headersTimeoutMs,   // slowloris guard, checked every…
      connectionsCheckingInterval: Math.min(5000, Math.ceil(http.headersTimeoutMs / 2)),   // …Node's default is 30 s
      keepAliveTimeout: http.keepAliveTimeoutMs,
      requireHostHeader: false,                // classify answers a missing Host (421) and logs it
    }, (req, res) => { void handle(req, res, this.#state, logs); });
    // Answer `Expect: 100-continue` only once the request is allowed (forward() sends the 100).
    this.httpServer.on('checkContinue', (req, res) => { void handle(req, res, this.#state, logs); });
    this.httpServer.on('clientError', (err: Error, socket: Socket) => {
      handleClientError(err, socket, this.#state, (r) => logs.access.info(r));
    });
    this.httpServer.on('connect', (req: IncomingMessage, socket: Socket) => this.refuseConnect(req, socket));
    // The HTTP server never listens itself; this starts its headersTimeout checks
    // (research/node-proxy.md §1.3, pitfall 2).
    this.httpServer.emit('listening');
    this.tlsServer = createTlsServer(material, tls, (socket) => this.accept(socket));
    this.tlsServer.on('tlsClientError', (err: NodeJS.ErrnoException, socket: TLSSocket) => {
      logs.app.debug({ client: socket.remoteAddress, code: err.code }, 'TLS handshake failed');
    });
  }

  get state(): State {
    return this.#state;
  }

  /** Swaps in a new state; requests already running keep the one they started with. */
  setState(state: State): void {
    this.#state = state;
  }

  listen(port = this.#state.config.listen.port, host = this.#state.config.listen.host): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.tlsServer.once('error', reject);
      this.tlsServer.listen({ port, host, backlog: 4096 }, () => {
        this.tlsServer.off('error', reject);
        resolve(this.tlsServer.address() as AddressInfo);
      });
    });
  }

  /** Stops accepting, closes every connection, and closes the directory. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.tlsServer.close(() => resolve()));
    for (const s of this.#sockets) s.destroy();
    this.httpServer.close();
    await closed;
    await this.#state.directory.close();
  }

  private accept(socket: TLSSocket): void {
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    this.httpServer.emit('connection', socket);
  }

  private refuseConnect(req: IncomingMessage, socket: Socket): void {
    const record = newAccessRecord(req);
    record.reason = 'bad-request';
    record.detail = 'CONNECT is not served';
    record.status = 405;
    socket.end('HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    this.logs.access.info(record);
  }
}
