/**
 * Starting one gateway in this process: load the config, build the state, open the access log,
 * listen (or take systemd's socket), start the admin listener; reload when a source file changes
 * or serve.ts says so (SIGHUP). serve.ts (also in each worker), the demo and the tests use it.
 */
import cluster from 'node:cluster';
import type { AddressInfo } from 'node:net';
import type { DestinationStream, Logger } from 'pino';
import { accessLogger, appLogger, clip, type AccessLog } from '../pipeline/access-log.js';
import { startAdmin, type LastReload } from './admin.js';
import { loadConfig, type Config } from '../config/load.js';
import type { Directory } from '../directory/directory.js';
import { ConfigError, ServiceAccountRefusedError, systemErrorText } from '../errors.js';
import { Metrics } from './metrics.js';
import { Gateway } from '../server.js';
import type { BusFactory } from '../state/bus.js';
import { allowedServices, buildState, sharedBus, type State } from './state.js';
import { certificateGaps, ensureSelfSigned, loadTlsMaterial, secureContextOptions, type TlsMaterial } from './tls.js';
import { useTicketKeys, type TicketKeys } from './ticket-keys.js';
import { ticketKeysFor } from '../state/redis-tickets.js';
import { watchFiles } from './watch.js';

export interface StartOptions {
  /** Access-log destination instead of `log.access` (tests capture it). */
  readonly accessStream?: DestinationStream;
  /** Operational-log destination instead of stderr. */
  readonly appStream?: DestinationStream;
  /** Overrides `listen` (tests use port 0). */
  readonly port?: number;
  readonly host?: string;
  /** The metrics registry to count into (a worker's; default: a new one). */
  readonly metrics?: Metrics;
  /** Overrides `admin.port` (tests use 0); `false` starts no admin listener (workers). */
  readonly adminPort?: number | false;
  /** Reload when the files the gateway was built from change. Default: true. */
  readonly watch?: boolean;
  /** Called once the state is built, just before listening (serve.ts frees the port here). */
  readonly beforeListen?: () => Promise<void>;
  /** The state bus (src/state): a worker's goes to the primary. Default: this process alone.
   * `state.redis` in the config wins over both. */
  readonly bus?: BusFactory;
  /** The TLS session-ticket key source: a worker's is the primary's. Default: this process's own, rotated. */
  readonly ticketKeys?: (rotateMs: number, log: Logger) => Promise<TicketKeys>;
}

export interface RunningGateway {
  readonly gateway: Gateway;
  readonly address: AddressInfo;
  /** The admin listener's address, when one runs. */
  readonly admin: AddressInfo | null;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Reloads config, policy and certificate; false (and the old state kept) on any error. */
  reload(): Promise<boolean>;
  /** Stops accepting and closes, letting requests in flight run up to `graceMs`. */
  close(graceMs?: number): Promise<void>;
}

/**
 * Loads a config file, builds the state and starts listening. Throws ConfigError (naming the key:
 * a port that cannot be bound, an access log that cannot be opened, a refused service account)
 * or DirectoryUnavailableError; a start that fails leaves nothing open.
 */
export async function startGateway(file: string, opts: StartOptions = {}): Promise<RunningGateway> {
  const config = loadConfig(file);
  const log = appLogger(config.log.level, opts.appStream);
  if (await selfSigned(config))
    log.warn({ cert: config.tls.cert }, 'generated a self-signed certificate (lab use only)');
  const material = loadTlsMaterial(config);
  warnAboutCertificate(material, config, log);
  const metrics = opts.metrics ?? new Metrics();
  const access = openAccessLog(config, log, metrics, opts.accessStream);
  const opened: { state?: State; gateway?: Gateway; tickets?: TicketKeys } = {};
  let served = material; // the certificate the listener serves now
  let lastReload: LastReload | null = null;
  let address: AddressInfo;
  let admin: Admin | null;
  try {
    const onUp = (up: boolean) => metrics.stateUp.set(up ? 1 : 0);
    const bus = sharedBus(config, log, onUp, opts.bus, cluster.isWorker);
    const state = (opened.state = await buildState(config, log, undefined, bus));
    const gw = (opened.gateway = new Gateway(state, material, { access: access.log, app: log, metrics }));
    const tickets = (opened.tickets = await (
      opts.ticketKeys ?? ((ms: number, l: Logger) => ticketKeysFor(ms, l, config.state.redis))
    )(config.tls.ticketKeyRotationSeconds * 1000, log));
    useTicketKeys(gw.tlsServer, tickets);
    await opts.beforeListen?.();
    const inherited = systemdSocket();
    const port = opts.port ?? config.listen.port;
    const host = opts.host ?? config.listen.host;
    const listen = () => (inherited === null ? gw.listen(port, host) : gw.listenOn(inherited));
    address = await bound(config, 'listen', host, port, listen);
    log.info(
      {
        address: address.address,
        port: address.port,
        upstream: config.upstream.origin,
        directory: config.directory.type,
        policy: state.policy.version,
      },
      'exgate listening',
    );
    metrics.certificates = { gateway: () => served.notAfter, upstream: () => gw.state.upstream.peerNotAfter };
    metrics.liveSessions = () => gw.state.sessions.live();
    metrics.upstreamPool = () => gw.state.upstream.pool;
    const adminAt =
      config.admin && opts.adminPort !== false
        ? { host: config.admin.host, port: opts.adminPort ?? config.admin.port }
        : null;
    admin = adminAt
      ? await bound(config, 'admin', adminAt.host, adminAt.port, () =>
          startAdmin(adminAt.host, adminAt.port, {
            directory: () => gw.state.directory.ping(),
            upstream: () => gw.state.upstream.probe(allowedServices(gw.state.policy)),
            metrics: async () => ({
              body: await metrics.registry.metrics(),
              contentType: metrics.registry.contentType,
            }),
            probed: (check, ok) => metrics.probed(check, ok),
            lastReload: () => lastReload,
          }),
        )
      : null;
  } catch (err) {
    // Whatever was opened is closed: an LDAP connection left open kept a process that could
    // not listen alive, deaf to SIGTERM (issue 10).
    if (opened.gateway) await opened.gateway.close();
    else await opened.state?.directory.close();
    opened.tickets?.close();
    opened.state?.bus.close();
    await access.close();
    throw err instanceof ServiceAccountRefusedError
      ? new ConfigError([{ file: config.file, key: err.key, message: err.message }], { cause: err })
      : err;
  }
  const gateway = opened.gateway;
  const tickets = opened.tickets as TicketKeys;
  if (admin) log.info({ address: admin.address.address, port: admin.address.port }, 'admin listener');

  const reload = async (): Promise<boolean> => {
    access.reopen(); // after logrotate moved the file
    try {
      const next: Config = loadConfig(file);
      const nextMaterial = loadTlsMaterial(next);
      const nextState = await buildState(next, log, gateway.state);
      const old = gateway.state;
      gateway.tlsServer.setSecureContext(secureContextOptions(nextMaterial, next.tls));
      gateway.tlsServer.setTicketKeys(tickets.current()); // setSecureContext drops them (Node 20)
      gateway.setState(nextState);
      // The old directory serves requests still running on the old state; closed a little later.
      if (old.directory !== nextState.directory) retire(old.directory);
      served = nextMaterial;
      log.info({ policy: nextState.policy.version }, 'reloaded');
      watcher?.reset(sourceFiles(next));
      lastReload = { time: new Date().toISOString(), ok: true };
      metrics.lastReloadOk.set(1);
      return true;
    } catch (err) {
      log.error(
        {
          problems: err instanceof ConfigError ? err.problems : undefined,
          err: err instanceof ConfigError ? undefined : err,
        },
        'reload failed; keeping the running configuration',
      );
      lastReload = { time: new Date().toISOString(), ok: false, error: reloadError(err) };
      metrics.reloadFailures.inc();
      metrics.lastReloadOk.set(0);
      return false;
    }
  };
  const retired = new Set<Directory>();
  const retire = (d: Directory) => {
    retired.add(d);
    setTimeout(() => {
      retired.delete(d);
      void d.close();
    }, 30_000).unref();
  };
  const watcher =
    opts.watch === false
      ? null
      : watchFiles(sourceFiles(config), (f) => {
          log.info({ file: f }, 'a configuration file changed; reloading');
          void reload();
        });
  const close = async (graceMs = 0) => {
    watcher?.close();
    admin?.server.close();
    await gateway.close(graceMs);
    tickets.close();
    gateway.state.bus.close(); // Redis: what this gateway holds goes back at once, not when it expires
    await Promise.all([...retired].map((d) => d.close()));
    await access.close();
  };
  return { gateway, address, admin: admin?.address ?? null, metrics, log, reload, close };
}

/**
 * Why a reload failed, for /readyz: a config error's problems (file and key; their messages never
 * echo a secret, config/load.ts), else the error's type and message, clipped.
 */
function reloadError(err: unknown): string {
  if (err instanceof ConfigError) return clip(err.message);
  return clip(err instanceof Error ? `${err.name}: ${err.message}` : String(err));
}

/**
 * The listening socket systemd handed over (socket activation, `exgate.socket`): file
 * descriptor 3 when LISTEN_FDS says so for this process. It stays open across restarts, so
 * clients that connect while the gateway restarts wait in its backlog instead of being refused.
 */
export function systemdSocket(): number | null {
  return !cluster.isWorker && systemdSocketPassed() ? 3 : null;
}

type Admin = Awaited<ReturnType<typeof startAdmin>>;

/** Listens, or says in one line why not, naming the key (`listen.port`, `admin.port`). */
async function bound<T>(
  config: Config,
  section: 'listen' | 'admin',
  host: string,
  port: number,
  listen: () => Promise<T>,
): Promise<T> {
  try {
    return await listen();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const key = code === 'EADDRNOTAVAIL' ? `${section}.host` : `${section}.port`;
    const hint =
      code === 'EACCES' && port < 1024
        ? '; ports below 1024 need root or CAP_NET_BIND_SERVICE (AmbientCapabilities= in the unit)'
        : '';
    const message = `cannot listen on ${host}:${port}: ${systemErrorText(err)}${hint}`;
    throw new ConfigError([{ file: config.file, key, message }]);
  }
}

/** ensureSelfSigned, with a certificate that cannot be written named by its key. */
async function selfSigned(config: Config): Promise<boolean> {
  try {
    return await ensureSelfSigned(config);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    const path = (err as NodeJS.ErrnoException).path ?? config.tls.cert;
    const key = path === config.tls.key ? 'tls.key' : 'tls.cert';
    const message = `cannot write the self-signed certificate ${path}: ${systemErrorText(err)}`;
    throw new ConfigError([{ file: config.file, key, message }]);
  }
}

/**
 * The access log, opened now so that a path that cannot be written stops the start with its key.
 * A write that fails later is logged and counted, and never stops the gateway (access-file.ts).
 */
function openAccessLog(config: Config, log: Logger, metrics: Metrics, stream?: DestinationStream): AccessLog {
  const target = config.log.access;
  try {
    return accessLogger(target, stream, {
      onWriteError: (err) => {
        metrics.accessLogWriteErrors.inc();
        const why = systemErrorText(err);
        log.error(
          { file: target, err },
          `cannot write the access log (${why}); access records go to stderr until it works again`,
        );
      },
      onRecovered: () => log.info({ file: target }, 'the access log is written again'),
    });
  } catch (err) {
    throw new ConfigError([
      { file: config.file, key: 'log.access', message: `cannot open ${target}: ${systemErrorText(err)}` },
    ]);
  }
}

/** Every file a state is built from. */
function sourceFiles(config: Config): string[] {
  return [config.file, ...config.watched];
}

/** Logs what is wrong or about to be with the certificate: names it lacks, expiry within 14 days. */
function warnAboutCertificate(material: TlsMaterial, config: Config, log: Logger): void {
  const missing = certificateGaps(material, config.names.externalList);
  if (missing.length > 0)
    log.warn({ missing }, 'the certificate does not name every external name; clients will refuse it for those');
  const days = Math.floor((material.notAfter.getTime() - Date.now()) / 86_400_000);
  if (days < 14)
    log.warn(
      { notAfter: material.notAfter.toISOString(), days },
      days < 0 ? 'the certificate has expired' : 'the certificate expires soon',
    );
}

/** True when systemd passed a listening socket to this process (socket activation). */
export function systemdSocketPassed(): boolean {
  return process.env.LISTEN_PID === String(process.pid) && Number(process.env.LISTEN_FDS) >= 1;
}
