/**
 * Pinned upstream connections to Exchange: one undici Client per client socket (NTLM authenticates
 * the TCP connection, and a shared pool hands one user's session to another), the TLS options
 * every connection to Exchange uses, the readiness probe, and the NTLM session of a connection.
 */
import { isIP, type Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { buildConnector, Client } from 'undici';
import type { Config } from '../config/load.js';
import type { Account } from '../directory/directory.js';

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

  constructor(
    readonly config: Config['upstream'],
    keepAliveTimeoutMs: number,
    private readonly log?: Pick<Logger, 'warn'>,
  ) {
    const https = config.url.protocol === 'https:';
    this.servername = config.servername;
    const connector = buildConnector({
      timeout: config.connectTimeoutMs,
      keepAlive: true, // 59-minute-silent ActiveSync sockets must survive internal firewalls
      ...(https
        ? {
            rejectUnauthorized: !config.insecureSkipVerify,
            ...(config.ca ? { ca: config.ca } : {}),
            minVersion: 'TLSv1.2' as const,
            ALPNProtocols: ['http/1.1'],
          }
        : {}),
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
      connect: (opts, callback) =>
        connector({ ...opts, servername: sni }, (...args) => {
          if (args[1] && 'getPeerCertificate' in args[1]) this.#notePeer(args[1] as TLSSocket); // the expiry gauge
          callback(...args);
        }),
    };
  }

  /** The upstream connection of this client connection; made on first use, destroyed with it. */
  clientFor(socket: Socket): Client {
    let client = this.#clients.get(socket);
    if (!client) {
      const c = new Client(this.config.origin, this.#options);
      c.on('connectionError', () => {}); // reported per request through the handler
      // A new upstream connection is a new NTLM context: the client must authenticate again.
      c.on('disconnect', () => {
        this.#sessions.delete(socket);
      });
      socket.once('close', () => {
        c.destroy().catch(() => {});
      });
      this.#clients.set(socket, c);
      client = c;
    }
    return client;
  }

  /** Resolves when Exchange answers an HTTP request on a connection of its own (any status). */
  async probe(timeoutMs = 5000): Promise<void> {
    const client = new Client(this.config.origin, {
      ...this.#options,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
    });
    try {
      const res = await client.request({
        path: '/owa/healthcheck.htm',
        method: 'GET',
        headers: { host: this.servername },
      });
      await res.body.dump();
    } finally {
      await client.destroy().catch(() => {});
    }
  }

  /** Logs why Exchange cannot be reached once per distinct cause, not once per request. */
  failed(cause: string): void {
    if (this.#causes.has(cause)) return;
    this.#causes.add(cause);
    this.log?.warn(
      { upstream: this.config.origin, cause },
      'cannot reach Exchange: allowed requests get 502 (exgate check says why)',
    );
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
