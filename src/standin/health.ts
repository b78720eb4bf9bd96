/**
 * The stand-in's Managed Availability side: `GET /<vdir>/healthcheck.htm` answered before authentication,
 * a switchable health per service, ServerWideOffline, and a kill switch for the whole server.
 * As Exchange's HealthCheckResponder: healthy is `200 OK<br/>FQDN`, unhealthy closes the connection with no
 * answer, never a 503 (research/owa-pool-ha.md B). A change applies at once (Exchange caches it for 15 s).
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

/** The services Exchange probes, named as in INTERFACE.md's service table. */
export type HealthService =
  | 'mapi'
  | 'rpc'
  | 'ews'
  | 'activesync'
  | 'owa'
  | 'ecp'
  | 'oab'
  | 'autodiscover'
  | 'powershell';

/**
 * How a service answers its probe: `healthy` 200 as Exchange; `close` the connection is closed with no
 * byte of an answer (what Exchange does for an inactive component); `status` a non-200 status (not what
 * Exchange does, for gateways that must treat any non-200 as down); `hang` no answer ever (timeout tests).
 */
export type HealthMode = 'healthy' | 'close' | 'status' | 'hang';

/** The controls a running stand-in adds for health and pool tests. */
export interface HealthControls {
  /** The server FQDN in probe bodies and in the `X-Standin-Server` header of every answer. */
  readonly name: string;
  /** setHealth switches one service's probe (or every service's: `'all'`); `status` defaults to 503. */
  setHealth(service: HealthService | 'all', mode: HealthMode, status?: number): void;
  /**
   * setOffline models `Set-ServerComponentState -Component ServerWideOffline -State Inactive`: every probe
   * fails the `close` way. Other requests are still served, new connections included: Exchange's proxy
   * checks component state only in the probe responder, so traffic stops only because balancers drain.
   */
  setOffline(offline: boolean): void;
  /** Sockets open now (TCP connections, including those still in a TLS handshake). */
  openConnections(): number;
  /** kill destroys every socket and stops listening: connects are refused, like a dead server. */
  kill(): Promise<void>;
  /** revive listens again on the same port; health settings and recorded requests are kept. */
  revive(): Promise<void>;
}

/** The FQDN a stand-in reports when not given a `name`: the front end X-FEServer names. */
export const DEFAULT_SERVER_NAME = 'EXCH-FE01.lab.test';

// The vdir (first path segment, lower-cased: IIS matches case-insensitively) → the service it belongs to.
const VDIRS: ReadonlyMap<string, HealthService> = new Map([
  ['mapi', 'mapi'],
  ['rpc', 'rpc'],
  ['ews', 'ews'],
  ['microsoft-server-activesync', 'activesync'],
  ['owa', 'owa'],
  ['ecp', 'ecp'],
  ['oab', 'oab'],
  ['autodiscover', 'autodiscover'],
  ['powershell', 'powershell'],
]);
const HEALTH_SERVICES: readonly HealthService[] = [...VDIRS.values()];
// HealthCheckResponder.IsHealthCheckRequest: GET, and the path ends in Constants.HealthCheckPage.
const PROBE_PAGE = '/healthcheck.htm';
const DEFAULT_FAILURE_STATUS = 503;

interface Setting {
  readonly mode: HealthMode;
  readonly status: number;
}

const HEALTHY: Setting = { mode: 'healthy', status: 200 };
const CLOSED: Setting = { mode: 'close', status: 0 };

/** ProbeResponder holds the per-service health and answers the probes. */
export class ProbeResponder {
  readonly #settings = new Map<HealthService, Setting>();
  #offline = false;

  constructor(readonly name: string) {}

  /**
   * serviceOf names the service a request probes, or null when it is no probe: a GET whose lower-cased path
   * is under a probed vdir and ends in `/healthcheck.htm` (Exchange answers it for any path so ending).
   */
  serviceOf(method: string | undefined, path: string): HealthService | null {
    if (method !== 'GET' || !path.endsWith(PROBE_PAGE)) return null;
    return VDIRS.get(path.split('/')[1] ?? '') ?? null;
  }

  set(service: HealthService | 'all', mode: HealthMode, status = DEFAULT_FAILURE_STATUS): void {
    const setting = mode === 'healthy' ? HEALTHY : { mode, status };
    for (const s of service === 'all' ? HEALTH_SERVICES : [service]) this.#settings.set(s, setting);
  }

  setOffline(offline: boolean): void {
    this.#offline = offline;
  }

  /** answer answers a probe of `service` as its current setting says. */
  answer(service: HealthService, req: IncomingMessage, res: ServerResponse): void {
    const setting = this.#offline ? CLOSED : (this.#settings.get(service) ?? HEALTHY);
    if (setting.mode === 'hang') return; // the socket stays open until the client gives up or the stand-in stops
    // HttpResponse.Close(): the connection ends with no status line. destroy() sends no TLS close_notify either,
    // so a client reads EOF where a response should be ("EOF or Incorrect data received" on a Kemp, research B).
    if (setting.mode === 'close') return void req.socket.destroy();
    const body = setting.mode === 'healthy' ? `200 OK<br/>${this.name}` : `${setting.status} probe failed`;
    // ASP.NET's default Content-Type; Exchange writes the body without setting one.
    res.writeHead(setting.status, {
      'Content-Type': 'text/html; charset=utf-8',
      'Content-Length': Buffer.byteLength(body),
    });
    res.end(body);
  }
}

/**
 * serverControls builds the {@link HealthControls} of a stand-in listening on `port` of `host`. `isClosed`
 * says whether the stand-in was closed for good: then revive refuses.
 */
export function serverControls(
  server: Server,
  sockets: ReadonlySet<Socket>,
  probes: ProbeResponder,
  at: { port: number; host: string },
  isClosed: () => boolean,
): HealthControls {
  let down: Promise<void> | undefined;
  return {
    name: probes.name,
    setHealth: (service, mode, status) => probes.set(service, mode, status),
    setOffline: (offline) => probes.setOffline(offline),
    openConnections: () => sockets.size,
    kill: () => (down ??= stopListening(server, sockets)),
    revive: async () => {
      if (isClosed()) throw new Error('stand-in is closed');
      if (!down) return; // never killed: it is listening
      await down;
      down = undefined;
      await listenAgain(server, at.port, at.host);
    },
  };
}

/**
 * stopListening stops accepting, destroys every open socket and waits until the server and every socket
 * closed (so openConnections() reads 0 after it). Safe when already stopped.
 */
export async function stopListening(server: Server, sockets: ReadonlySet<Socket>): Promise<void> {
  const closed = server.listening
    ? new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve())))
    : Promise.resolve();
  const gone = [...sockets].map(
    (socket) =>
      new Promise((resolve) => {
        if (socket.closed) resolve(undefined);
        else socket.once('close', resolve);
      }),
  );
  for (const socket of sockets) socket.destroy();
  await Promise.all([closed, ...gone]);
}

function listenAgain(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
