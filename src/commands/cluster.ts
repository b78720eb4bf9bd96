/**
 * `workers: N | auto`: the primary forks N workers (node:cluster) that share the listening port,
 * relays the lockout between them, and runs the admin listener with the workers' metrics
 * aggregated. Each worker is a full gateway (startGateway). Signals: SIGHUP reloads every worker;
 * SIGTERM stops them gracefully, then the primary. A worker that dies is replaced.
 *
 * The smart lockout stays consistent: every failure and success a worker records is sent to the
 * primary, which applies it to its own copy and hands it to every other worker (lockout.ts
 * `apply`); a new worker starts from the events so far. Before a bind, a worker reserves the
 * attempt with the primary, which counts every worker's attempts in flight: a burst spread over
 * the workers cannot slip past the threshold.
 */
import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry, type Registry } from 'prom-client';
import { startAdmin } from '../admin.js';
import { Metrics } from '../metrics.js';
import type { Config } from '../config/load.js';
import { Lockout, type Attempt, type LockoutEvent, type LockoutSettings, type LockoutVerdict } from '../lockout.js';
import { openDirectory } from '../state.js';
import { Upstream } from '../upstream.js';
import { appLogger } from '../access-log.js';
import type { RunningGateway } from '../start.js';

const MESSAGE = 'exgate:lockout';
const RESERVE = 'exgate:reserve';
const RESERVED = 'exgate:reserved';
const RELEASE = 'exgate:release';
const REPLAY = 'exgate:replay';
const SETTINGS = 'exgate:settings';
const METRICS = 'exgate:metrics';
const METRICS_ANSWER = 'exgate:metrics-answer';
/** The primary's /metrics waits this long for a worker's registry, then leaves it out. */
const METRICS_TIMEOUT_MS = 5000;
/** Events kept for a new worker (its lockout starts from them), at most. */
const REPLAY_MAX = 100_000;
/** A worker waits this long, beyond the lockout's own wait, for the primary's reservation before deciding alone. */
const RESERVE_TIMEOUT_MS = 2000;
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
  let giveUp: ((code?: number) => void) | null = null;
  /** Workers listening now: /readyz says not ready without one. */
  const serving = new Set<number>();
  const fork = () => {
    if (stopping) return;
    const worker = cluster.fork({ EXGATE_WORKER: '1' });
    const started = Date.now();
    let listening = false;
    worker.on('listening', () => { listening = true; failedStarts = 0; serving.add(worker.id); });
    worker.once('exit', () => serving.delete(worker.id));
    worker.on('message', (msg: unknown) => relay(worker, msg));
    worker.once('exit', () => {
      if (stopping) return;
      if (Date.now() - started > 60_000) delay = RESTART_MIN_MS;
      if (!listening) failedStarts++;
    });
    return worker;
  };
  // The primary's own lockout: every worker's events, and every attempt in flight (reservations).
  const lockout = new Lockout(config.lockout);
  const recent: LockoutEvent[] = [];
  const reservations = new Map<string, () => void>();
  const relay = (from: Worker, msg: unknown) => {
    if (isLockoutMessage(msg)) {
      lockout.apply(msg.event);
      recent.push(msg.event);
      if (recent.length > REPLAY_MAX) recent.splice(0, recent.length - REPLAY_MAX);
      for (const w of Object.values(cluster.workers ?? {})) if (w && w !== from && w.isConnected()) w.send(msg);
    } else if (isReserve(msg)) {
      // May wait for other attempts of the account to settle (Lockout.acquire); answers once decided.
      void lockout.acquire(msg.account, msg.source, msg.fingerprint).then((attempt) => {
        if (!from.isConnected()) return attempt.release();
        if (attempt.verdict === 'open') reservations.set(`${from.id}:${msg.id}`, attempt.release);
        from.send({ type: RESERVED, id: msg.id, verdict: attempt.verdict });
      });
    } else if (isSettings(msg)) {
      lockout.reconfigure(msg.settings);                  // a worker reloaded (SIGHUP or a changed file)
    } else if (isRelease(msg)) {
      reservations.get(`${from.id}:${msg.id}`)?.();
      reservations.delete(`${from.id}:${msg.id}`);
    }
  };
  cluster.on('online', (worker) => worker.send({ type: REPLAY, events: recent }));
  cluster.on('exit', (worker) => {
    for (const [key, release] of reservations) if (key.startsWith(`${worker.id}:`)) { release(); reservations.delete(key); }
  });
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return;
    if (code === EX_CONFIG) {                             // a refused service account: a restart would bind again
      log.fatal({ pid: worker.process.pid, code }, 'a worker stopped on a configuration error; not restarting');
      giveUp?.(EX_CONFIG);
      return;
    }
    if (failedStarts >= MAX_FAILED_STARTS) {
      log.fatal({ failedStarts }, 'workers keep failing to start; giving up');
      giveUp?.();
      return;
    }
    log.error({ pid: worker.process.pid, code, signal, restartInMs: delay }, 'a worker died; starting another');
    setTimeout(fork, delay).unref();
    delay = Math.min(delay * 2, RESTART_MAX_MS);
  });
  for (let i = 0; i < config.workers; i++) fork();
  log.info({ workers: config.workers }, 'exgate primary started');

  const admin = config.admin ? await startPrimaryAdmin(config, () => serving.size) : null;
  process.on('SIGHUP', () => { for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGHUP'); });
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
        w.once('exit', () => { if (--left === 0) resolve(0); });
        w.process.kill('SIGTERM');
      }
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
  return code;
}

/** In a worker: share this gateway's lockout with the other workers through the primary. */
export function joinCluster(running: RunningGateway): void {
  const lockout = () => running.gateway.state.authenticator.lockout;
  const wire = () => {
    lockout().onEvent = (event) => process.send?.({ type: MESSAGE, event });
    lockout().onReconfigure = (settings) => process.send?.({ type: SETTINGS, settings });
  };
  wire();
  // Binds are reserved by the primary, which sees the attempts in flight of every worker.
  let next = 0;
  const waiting = new Map<number, (verdict: LockoutVerdict) => void>();
  lockout().remote = (account, source, fingerprint) => new Promise<Attempt>((resolve) => {
    const id = ++next;
    const timer = setTimeout(() => {                  // the primary did not answer: decide alone
      waiting.delete(id);
      resolve(lockout().acquire(account, source, fingerprint));
    }, RESERVE_TIMEOUT_MS + (running.gateway.state.config.lockout.waitMs ?? 10_000));
    waiting.set(id, (verdict) => {
      clearTimeout(timer);
      resolve({ verdict, release: () => { if (verdict === 'open') process.send?.({ type: RELEASE, id }); } });
    });
    process.send?.({ type: RESERVE, id, account, source, fingerprint });
  });
  process.on('message', (msg: unknown) => {
    if (isMetricsRequest(msg)) {
      const { id } = msg;
      const answer = (metrics: object) => process.send?.({ type: METRICS_ANSWER, id, metrics });
      void running.metrics.registry.getMetricsAsJSON().then(answer);
    } else if (isLockoutMessage(msg)) lockout().apply(msg.event);
    else if (isReplay(msg)) for (const e of msg.events) lockout().apply(e);
    else if (isReserved(msg)) {
      waiting.get(msg.id)?.(msg.verdict);
      waiting.delete(msg.id);
    }
  });
  // A reload keeps the Lockout object (state.ts); wire again in case a future reload does not.
  process.on('SIGHUP', () => setTimeout(wire, 1000).unref());
}

function isLockoutMessage(msg: unknown): msg is { type: typeof MESSAGE; event: LockoutEvent } {
  return typeOf(msg) === MESSAGE;
}
function isReserve(msg: unknown): msg is { id: number; account: string; source: string; fingerprint: string } {
  return typeOf(msg) === RESERVE;
}
function isReserved(msg: unknown): msg is { id: number; verdict: LockoutVerdict } {
  return typeOf(msg) === RESERVED;
}
function isRelease(msg: unknown): msg is { id: number } {
  return typeOf(msg) === RELEASE;
}
function isSettings(msg: unknown): msg is { settings: LockoutSettings } {
  return typeOf(msg) === SETTINGS;
}
function isReplay(msg: unknown): msg is { events: LockoutEvent[] } {
  return typeOf(msg) === REPLAY;
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
  const { server } = await startAdmin(config.admin!.host, config.admin!.port, {
    directory: () => directory.ping(),
    upstream: () => upstream.probe(),
    gateway: async () => { if (listening() === 0) throw new Error('no worker is listening'); },
    metrics: async () => ({ body: await clusterMetrics(own.registry), contentType: own.registry.contentType }),
    probed: (check, ok) => own.probed(check, ok),
  });
  return { close: () => { server.close(); void directory.close(); } };
}

let metricsRequests = 0;

/**
 * Every worker's registry and the primary's, aggregated by each metric's `aggregator` (prom-client's
 * own clusterMetrics asks the workers only). A worker that does not answer in time is left out.
 */
async function clusterMetrics(own: Registry): Promise<string> {
  const id = ++metricsRequests;
  const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w?.isConnected() === true);
  const answers = await Promise.all(workers.map((w) => new Promise<object | null>((resolve) => {
    const done = (metrics: object | null) => { clearTimeout(timer); w.off('message', onMessage); resolve(metrics); };
    const onMessage = (msg: unknown) => {
      const answer = msg as { id?: unknown; metrics: object };
      if (typeOf(msg) === METRICS_ANSWER && answer.id === id) done(answer.metrics);
    };
    const timer = setTimeout(() => done(null), METRICS_TIMEOUT_MS);
    w.on('message', onMessage);
    try { w.send({ type: METRICS, id }); } catch { done(null); }    // it disconnected meanwhile
  })));
  const all = [await own.getMetricsAsJSON(), ...answers.filter((a): a is object => a !== null)];
  return AggregatorRegistry.aggregate(all).metrics();
}
