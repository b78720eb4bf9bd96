/**
 * Pinned upstream connections to Exchange: one undici Client per client socket and server (NTLM
 * authenticates the TCP connection, and a shared pool hands one user's session to another), the TLS
 * options every connection to Exchange uses, readiness, and the NTLM session of a connection.
 */
import { isIP, type Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { buildConnector, type Client } from 'undici';
import type { Config } from '../config/load.js';
import type { UpstreamServer } from '../config/upstream.js';
import type { Account } from '../directory/directory.js';
import { SERVICES, type Service } from '../pipeline/services.js';
import { CONNECT_FAILED, PROBE_PATH, probeOnce } from './health.js';
import { Pool, type Binding, type Member, type OpsLog } from './pool.js';

/**
 * The upstream side of the gateway: the pool of Exchange servers (one with `url`), the pinned
 * connection of each client connection per protocol, and the account Exchange accepted on it by
 * NTLM (a session lives exactly as long as its upstream connection).
 */
export class Upstream {
  readonly #sessions: WeakMap<Socket, Account>;
  readonly pool: Pool;
  /** The first server's name (every server's with one `servername`). */
  readonly servername: string;

  /** Causes of 502 already in the operational log; cleared when Exchange answers again. */
  readonly #causes = new Set<string>();

  /** `previous` (a reload): the servers that stay keep their connections, health and NTLM sessions. */
  constructor(
    readonly config: Config['upstream'],
    keepAliveTimeoutMs: number,
    private readonly log?: OpsLog,
    previous?: Upstream,
  ) {
    this.servername = config.servername;
    const sessions = (this.#sessions = previous ? previous.#sessions : new WeakMap());
    this.pool = new Pool(
      config,
      (server, pool) => ({
        options: this.#options(server, keepAliveTimeoutMs, pool),
        probeOptions: this.#options(server, keepAliveTimeoutMs),
        settingsKey: JSON.stringify([server, config.ca, config.insecureSkipVerify, config.connectTimeoutMs]),
      }),
      { log, disconnected: (socket) => sessions.delete(socket) },
      previous?.pool,
    );
    this.pool.start();
  }

  /** `pool`: connect failures count against the server (real traffic; a probe counts its own result). */
  #options(server: UpstreamServer, keepAliveTimeoutMs: number, pool?: Pool): Client.Options {
    const config = this.config;
    const https = server.url.protocol === 'https:';
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
    const sni = isIP(server.servername) ? undefined : server.servername;
    return {
      pipelining: 1,
      keepAliveTimeout: keepAliveTimeoutMs,
      keepAliveMaxTimeout: keepAliveTimeoutMs,
      connect: (opts, callback) =>
        connector({ ...opts, servername: sni }, (err, socket) => {
          if (err) {
            // Nothing of any request was sent: forward() may try another server (isConnectFailure).
            Object.assign(err, { [CONNECT_FAILED]: true });
            const member = pool?.members.find((m) => m.server === server);
            if (member) pool?.connectFailed(member, describe(err));
            return callback(err, null);
          }
          if (socket && 'getPeerCertificate' in socket) this.#notePeer(socket as TLSSocket); // the expiry gauge
          callback(null, socket as Socket);
        }),
    };
  }

  /**
   * The server and pinned connection for a request of this client connection to `service`
   * (healthy, fewest connections; the same while it stays healthy); null when no server is healthy.
   */
  bind(socket: Socket, service: Service, exclude?: ReadonlySet<Member>): Binding | null {
    return this.pool.bind(socket, service, exclude);
  }

  /** The pool has health checks (`servers`, or `healthCheck`): running out of servers is 503, not 502. */
  get checked(): boolean {
    return this.config.healthCheck !== null;
  }

  /** Stops the health checks (the gateway stops). */
  close(): void {
    this.pool.stop();
  }

  /**
   * Readiness. With health checks: rejects naming the protocols of `services` no server is healthy
   * for. Without (one `url`): resolves when Exchange answers an HTTP request on a connection of its own.
   */
  async probe(services: Iterable<Service> = SERVICES, timeoutMs = 5000): Promise<void> {
    if (this.checked) {
      const missing = this.pool.unavailable(services);
      if (missing.length > 0) throw new Error(`no healthy Exchange server for ${missing.join(', ')}`);
      return;
    }
    const member = this.pool.members[0] as Member;
    const { origin } = member.server;
    const result = await probeOnce(origin, member.probeOptions, this.servername, PROBE_PATH.owa, timeoutMs);
    if (!result.ok && result.cause !== null && !result.cause.startsWith('HTTP ')) throw new Error(result.cause);
  }

  /** Logs why Exchange cannot be reached once per distinct cause, not once per request. */
  failed(cause: string, server: string): void {
    if (this.#causes.has(cause)) return;
    this.#causes.add(cause);
    this.log?.warn(
      { upstream: server, cause },
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

function describe(err: Error): string {
  const code = (err as NodeJS.ErrnoException).code;
  return `${code ?? err.name}: ${err.message}`;
}
