/**
 * `workers: N | auto`: the primary forks N workers (node:cluster) that share the listening port,
 * serves them the state bus (src/state/ipc-primary.ts: the lockout and the tunnel counts, with
 * the primary as authority), and runs the admin listener with the workers' metrics aggregated.
 * Each worker is a full gateway (startGateway) on `workerBus`. Signals: SIGHUP reloads every
 * worker; SIGTERM stops them gracefully, then the primary. A worker that dies is replaced.
 */
import cluster, { type Worker } from 'node:cluster';
import { statSync } from 'node:fs';
import { AggregatorRegistry, type Registry } from 'prom-client';
import { startAdmin } from './admin.js';
import { Metrics } from './metrics.js';
import type { Config } from '../config/load.js';
import { ConfigError, fatalText, systemErrorText } from '../errors.js';
import { Lockout } from '../auth/lockout.js';
import { servePrimary } from '../state/ipc-primary.js';
import { serveTicketKeys } from './ticket-keys.js';
import { ticketKeysFor } from '../state/redis-tickets.js';
import { Hub } from '../state/local-bus.js';
import { openDirectory } from './state.js';
import { SERVICES, type Service } from '../pipeline/services.js';
import { readPolicy } from '../policy/structure.js';
import { Upstream } from '../upstream/upstream.js';
import { appLogger } from '../pipeline/access-log.js';
import type { RunningGateway } from './start.js';

export { workerBus } from '../state/ipc-bus.js';
export { workerTicketKeys } from './ticket-keys.js';

const METRICS = 'exgate:metrics';
const METRICS_ANSWER = 'exgate:metrics-answer';
/** The primary's /metrics waits this long for a worker's registry, then leaves it out. */
const METRICS_TIMEOUT_MS = 5000;
/** Events kept for a new worker (its lockout starts from them), at most. */
const REPLAY_MAX = 100_000;
/** A worker's exit code for a configuration error (sysexits EX_CONFIG): never restarted. */
const EX_CONFIG = 78;
/** Worker restarts back off from 1 s to 30 s; a worker that lived a minute resets the backoff. */
const RESTART_MIN_MS = 1000;
const RESTART_MAX_MS = 30_000;
/** Workers that died before listening, in a row, before the primary gives up (exit 1). */
const MAX_FAILED_STARTS = 5;

/**
 * Runs the primary until SIGTERM/SIGINT; resolves with the exit code. `onStop` is called once
 * the primary starts stopping (serve.ts ends the mailbox-flags schedule there).
 */
export async function runPrimary(config: Config, onStop: () => void): Promise<number> {
  const log = appLogger(config.log.level);
  let stopping = false;
  let delay = RESTART_MIN_MS;
  let failedStarts = 0;
  /** Whether any worker ever listened: until one has, a worker that exits is a start that failed. */
  let anyListened = false;
  let giveUp: ((code?: number) => void) | null = null;
  /** Workers listening now: /readyz says not ready without one. */
  const serving = new Set<number>();
  // The bus's authority: the primary's own lockout (every worker's events and attempts in flight)
  // and the slot counts (tunnels per address). A worker that exits releases what it held.
  const bus = servePrimary(new Hub(new Lockout(config.lockout), { retainMax: REPLAY_MAX }));
  // One session-ticket key for every worker: a client resumes on whichever it lands on.
  // With state.redis, the key every gateway shares (state/redis-tickets.ts); else the primary's own.
  const rotateMs = config.tls.ticketKeyRotationSeconds * 1000;
  const keys = await ticketKeysFor(rotateMs, log, config.state.redis);
  const tickets = serveTicketKeys(keys);
  // The admin listener before any worker: a port in use ends the primary with one line, exit 1 (it
  // kept running with a live worker and an open Redis connection, and printed a bare EADDRINUSE).
  let admin: { close(): void } | null = null;
  try {
    admin = config.admin ? await startPrimaryAdmin(config, () => serving.size) : null;
  } catch (err) {
    tickets.close();
    keys.close();
    onStop();
    process.stderr.write(fatalText(adminListenError(config, err)));
    return 1;
  }
  const fork = () => {
    if (stopping) return;
    const worker = cluster.fork({ EXGATE_WORKER: '1' });
    const started = Date.now();
    let listening = false;
    worker.on('listening', () => {
      listening = true;
      anyListened = true;
      failedStarts = 0;
      serving.add(worker.id);
    });
    worker.once('exit', () => serving.delete(worker.id));
    bus.attach(worker);
    tickets.attach(worker);
    worker.once('exit', () => {
      if (stopping) return;
      if (Date.now() - started > 60_000) delay = RESTART_MIN_MS;
      if (!listening) failedStarts++;
    });
    return worker;
  };
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return;
    if (code === EX_CONFIG) {
      // a refused service account: a restart would bind again
      log.fatal({ worker: worker.process.pid, code }, 'a worker stopped on a configuration error; not restarting');
      giveUp?.(EX_CONFIG);
      return;
    }
    if (!anyListened) {
      // the first worker could not start (its line says why)
      log.fatal({ worker: worker.process.pid, code, signal }, 'the first worker could not start; not starting others');
      giveUp?.(typeof code === 'number' && code > 0 ? code : 1);
      return;
    }
    if (failedStarts >= MAX_FAILED_STARTS) {
      log.fatal({ failedStarts }, 'workers keep failing to start; giving up');
      giveUp?.();
      return;
    }
    log.error({ worker: worker.process.pid, code, signal, restartInMs: delay }, 'a worker died; starting another');
    setTimeout(fork, delay); // ref'd: with no worker left, it keeps the primary alive
    delay = Math.min(delay * 2, RESTART_MAX_MS);
  });
  // One worker first: a start that fails (a refused service account, a port in use) fails once,
  // not once per worker (each would bind to AD, and N wrong binds can lock the account).
  fork()?.once('listening', () => {
    for (let i = 1; i < config.workers; i++) fork();
  });
  log.info({ workers: config.workers }, 'exgate primary started');

  process.on('SIGHUP', () => {
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGHUP');
  });
  const code = await new Promise<number>((resolve) => {
    giveUp = (exit = 1) => {
      stopping = true;
      onStop();
      admin?.close();
      for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
      resolve(exit);
    };
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      onStop();
      log.info({ signal }, 'stopping workers');
      admin?.close();
      const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
      let left = workers.length;
      if (left === 0) resolve(0);
      for (const w of workers) {
        w.once('exit', () => {
          if (--left === 0) resolve(0);
        });
        w.process.kill('SIGTERM');
      }
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
  tickets.close();
  keys.close();
  return code;
}

/** In a worker: answer the primary's requests for this worker's metrics. (The state bus is workerBus.) */
export function joinCluster(running: RunningGateway): void {
  process.on('message', (msg: unknown) => {
    if (!isMetricsRequest(msg)) return;
    const { id } = msg;
    const answer = (metrics: object) => process.send?.({ type: METRICS_ANSWER, id, metrics });
    void running.metrics.registry.getMetricsAsJSON().then(answer);
  });
}

function isMetricsRequest(msg: unknown): msg is { id: number } {
  return typeOf(msg) === METRICS;
}
function typeOf(msg: unknown): unknown {
  return typeof msg === 'object' && msg !== null ? (msg as { type?: unknown }).type : undefined;
}

/**
 * The admin listener in the primary: its own directory and upstream probes, and the workers'
 * metrics aggregated with its own (the probes' gauges, Exchange's certificate as it saw it).
 */
async function startPrimaryAdmin(config: Config, listening: () => number): Promise<{ close(): void }> {
  const directory = openDirectory(config, { warn: () => {} });
  const upstream = new Upstream(config.upstream, 10_000);
  const own = new Metrics(false);
  own.certificates = { upstream: () => upstream.peerNotAfter };
  own.upstreamPool = () => upstream.pool;
  const allowed = allowedInFile(config.policyFile);
  const started = startAdmin(config.admin!.host, config.admin!.port, {
    directory: () => directory.ping(),
    upstream: () => upstream.probe(allowed()),
    gateway: async () => {
      if (listening() === 0) throw new Error('no worker is listening');
    },
    metrics: async () => ({ body: await clusterMetrics(own.registry), contentType: own.registry.contentType }),
    probed: (check, ok) => own.probed(check, ok),
  });
  const { server } = await started.catch((err: unknown) => {
    upstream.close(); // its health checks would keep the process alive
    void directory.close();
    throw err;
  });
  return {
    close: () => {
      server.close();
      upstream.close();
      void directory.close();
    },
  };
}

/**
 * The services some rule of the policy file allows, as the workers' readiness asks (state.ts allowedServices):
 * the primary resolves no names, so it reads the file's rules as written, again when the file changes. A file
 * that does not validate keeps what it last said (the workers keep their policy too); at first, every service.
 */
export function allowedInFile(file: string): () => readonly Service[] {
  let seen = '';
  let services: readonly Service[] = SERVICES;
  return () => {
    try {
      const stat = statSync(file);
      const version = `${stat.mtimeMs}:${stat.size}`;
      if (version === seen) return services;
      seen = version;
      const rules = readPolicy(file).parsed?.rules;
      if (rules) services = SERVICES.filter((s) => rules.some((r) => r.allow !== undefined && r.services.includes(s)));
    } catch {
      // unreadable now: the workers keep their policy, and so does this
    }
    return services;
  };
}

let metricsRequests = 0;

/**
 * Every worker's registry and the primary's, aggregated by each metric's `aggregator` (prom-client's
 * own clusterMetrics asks the workers only). A worker that does not answer in time is left out.
 */
async function clusterMetrics(own: Registry): Promise<string> {
  const id = ++metricsRequests;
  const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w?.isConnected() === true);
  const answers = await Promise.all(
    workers.map(
      (w) =>
        new Promise<object | null>((resolve) => {
          const done = (metrics: object | null) => {
            clearTimeout(timer);
            w.off('message', onMessage);
            resolve(metrics);
          };
          const onMessage = (msg: unknown) => {
            const answer = msg as { id?: unknown; metrics: object };
            if (typeOf(msg) === METRICS_ANSWER && answer.id === id) done(answer.metrics);
          };
          const timer = setTimeout(() => done(null), METRICS_TIMEOUT_MS);
          w.on('message', onMessage);
          try {
            w.send({ type: METRICS, id });
          } catch {
            done(null);
          } // it disconnected meanwhile
        }),
    ),
  );
  const all = [await own.getMetricsAsJSON(), ...answers.filter((a): a is object => a !== null)];
  return AggregatorRegistry.aggregate(all).metrics();
}

/** The admin listener could not listen: the error names `admin.host` or `admin.port`, as one process says it. */
function adminListenError(config: Config, err: unknown): ConfigError {
  const code = (err as NodeJS.ErrnoException).code;
  const key = code === 'EADDRNOTAVAIL' ? 'admin.host' : 'admin.port';
  const where = `${config.admin?.host}:${config.admin?.port}`;
  return new ConfigError([{ file: config.file, key, message: `cannot listen on ${where}: ${systemErrorText(err)}` }]);
}
