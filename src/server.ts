/**
 * The server: a TLS listener, Node's HTTP server behind it, and the hand-off of each request to
 * handle() (gateway.ts). It also peeks at new connections for Outlook Anywhere (rpc-tunnel.ts),
 * answers CONNECT and parser errors on the raw socket, and stops gracefully.
 */
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server as HttpServer,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo, Server as NetServer, Socket } from 'node:net';
import type { Server as TlsServer, TLSSocket } from 'node:tls';
import { newAccessRecord, writeRecord, type AccessRecord } from './pipeline/access-log.js';
import { authorizeAnonymous } from './pipeline/authorize.js';
import { answerRaw, handleClientError, OwedResponses } from './exchange/client-error.js';
import { handle, recordOnceDone, type Telemetry } from './gateway.js';
import { onClose } from './pipeline/on-close.js';
import { deny } from './pipeline/respond.js';
import { peek } from './exchange/rpc-tunnel.js';
import type { State } from './runtime/state.js';
import { createTlsServer, type TlsMaterial } from './runtime/tls.js';
import { clientAddress } from './runtime/client-address.js';
import { listenerFor } from './runtime/proxy-front.js';

/** A running gateway: TLS listener → HTTP server → handle(). */
export class Gateway {
  #state: State;
  #draining = false;
  readonly #longPolls = new Set<ServerResponse>();
  /** Responses not yet started: told to close their connection when a stop begins. */
  readonly #pending = new Set<ServerResponse>();
  readonly tlsServer: TlsServer;
  readonly httpServer: HttpServer;
  /** What listens: the TLS server, or the PROXY protocol listener in front of it (proxy-front.ts). */
  readonly #listener: NetServer;
  readonly #sockets = new Set<Socket>();
  /** Per connection, the responses a raw answer must not overtake (client-error.ts). */
  readonly #owed = new OwedResponses();

  constructor(
    state: State,
    material: TlsMaterial,
    private readonly logs: Telemetry,
  ) {
    this.#state = state;
    const { http, tls } = state.config;
    this.httpServer = createHttpServer(
      {
        requestTimeout: 0, // Node's 300 s default also cuts long uploads
        headersTimeout: http.headersTimeoutMs, // slowloris guard, checked every…
        connectionsCheckingInterval: Math.min(5000, Math.ceil(http.headersTimeoutMs / 2)), // …Node's default is 30 s
        keepAliveTimeout: http.keepAliveTimeoutMs,
        requireHostHeader: false, // classify names the site by SNI then, or answers 421, and logs it
      },
      (req, res) => this.serve(req, res),
    );
    // Answer `Expect: 100-continue` only once the request is allowed (forward() sends the 100).
    this.httpServer.on('checkContinue', (req, res) => this.serve(req, res));
    this.httpServer.on('clientError', (err: Error, socket: Socket) => {
      handleClientError(err, socket, {
        state: this.#state,
        owed: this.#owed,
        write: (r) => this.write(r),
        note: (s, message) => logs.app.info({ client: clientAddress(s) }, message),
      });
    });
    // An `Expect` other than 100-continue: refused through deny() and logged (Node would send a bare 417).
    this.httpServer.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
      if (!this.#owed.add(req.socket, res)) return;
      const record = newAccessRecord(req.socket, req);
      recordOnceDone(logs, record, res).settled();
      deny(req, res, record, 'bad-request', { detail: 'unsupported Expect', status: 417 });
    });
    this.httpServer.on('connect', (req: IncomingMessage, socket: Socket) => this.refuseConnect(req, socket));
    // The HTTP server never listens itself; this starts its headersTimeout checks
    // (research/node-proxy.md §1.3, pitfall 2).
    this.httpServer.emit('listening');
    this.tlsServer = createTlsServer(
      material,
      tls,
      (socket) => this.accept(socket),
      (err, socket) => {
        logs.app.debug({ client: clientAddress(socket), code: err.code }, 'TLS handshake failed');
      },
    );
    this.#listener = listenerFor(this.tlsServer, state.config, (peer, reason, detail) => {
      logs.app.warn({ client: peer, reason, detail }, 'PROXY protocol: connection refused');
      logs.metrics.proxyRefused.inc({ reason });
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
      this.#listener.once('error', reject);
      this.#listener.listen({ port, host, backlog: 4096 }, () => {
        this.#listener.off('error', reject);
        resolve(this.#listener.address() as AddressInfo);
      });
    });
  }

  /** Listens on an inherited socket (systemd socket activation). */
  listenOn(fd: number): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.#listener.once('error', reject);
      this.#listener.listen({ fd }, () => {
        this.#listener.off('error', reject);
        resolve(this.#listener.address() as AddressInfo);
      });
    });
  }

  private serve(req: IncomingMessage, res: ServerResponse): void {
    if (!this.#owed.add(req.socket, res)) return; // parsed after a parser error: never served
    if (this.#draining)
      res.shouldKeepAlive = false; // answered, then the connection closes
    else {
      this.#pending.add(res);
      onClose(res, () => this.#pending.delete(res));
    }
    void handle(req, res, this.#state, this.logs, (r) => {
      this.#longPolls.add(r);
      onClose(r, () => this.#longPolls.delete(r));
    });
  }

  /**
   * A graceful stop: stops accepting, answers every request in flight with `Connection: close`
   * and closes idle keep-alive connections; long-polls are cut after `longPollGraceMs` (their
   * clients reconnect at once), everything else gets up to `graceMs`; then what is left is cut
   * and the directory closed.
   */
  async close(
    graceMs = 0,
    longPollGraceMs = Math.min(graceMs, this.#state.config.http.longPollGraceMs),
  ): Promise<void> {
    this.#draining = true;
    for (const res of this.#pending) if (!res.headersSent) res.shouldKeepAlive = false;
    const closed = new Promise<void>((resolve) => this.#listener.close(() => resolve()));
    const started = Date.now();
    const deadline = started + graceMs;
    while (this.#sockets.size > 0 && Date.now() < deadline) {
      this.httpServer.closeIdleConnections();
      if (Date.now() - started >= longPollGraceMs) for (const r of this.#longPolls) r.destroy();
      await new Promise((r) => setTimeout(r, 50));
    }
    for (const s of this.#sockets) s.destroy();
    this.httpServer.close();
    await closed;
    this.#state.upstream.close(); // the health checks
    await this.#state.directory.close();
  }

  private accept(socket: TLSSocket): void {
    if (this.#draining) {
      // a handshake that finished during the stop
      socket.destroy();
      return;
    }
    this.#sockets.add(socket);
    this.logs.metrics.openConnections.inc();
    socket.once('close', () => {
      this.#sockets.delete(socket);
      this.logs.metrics.openConnections.dec();
    });
    // Outlook Anywhere can only be told apart before the HTTP parser sees the bytes; look only
    // when the policy may let someone use it.
    if (authorizeAnonymous('rpc', this.#state.policy) === null) {
      peek(
        socket,
        () => this.#state,
        (s) => this.httpServer.emit('connection', s),
        (r) => this.write(r),
      );
    } else {
      this.httpServer.emit('connection', socket);
    }
  }

  /** CONNECT never reaches a request handler (Node hands over the socket): answer it raw. */
  private refuseConnect(req: IncomingMessage, socket: Socket): void {
    const record = newAccessRecord(socket, req);
    record.reason = 'bad-request';
    record.detail = 'CONNECT is not served';
    // After the responses owed to earlier pipelined requests, like every raw answer.
    this.#owed.answerAfterOwed(socket, () => answerRaw(socket, 405, record, (r) => this.write(r)));
  }

  /** Writes a record made outside handle() (parser refusals, tunnels, CONNECT). */
  private write(record: AccessRecord): void {
    writeRecord(this.logs.access, record);
    this.logs.metrics.observe(record);
  }
}
