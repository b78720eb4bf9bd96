/**
 * Prometheus metrics (prom-client), for the admin listener's /metrics. Most are counted from the
 * access record when it is written, so the metrics and the log never disagree. With workers,
 * each worker keeps its own registry and the primary aggregates them with its own (cluster.ts).
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, type LabelValues, Registry } from 'prom-client';
import type { AccessRecord } from '../pipeline/access-log.js';
import type { Pool } from '../upstream/pool.js';

const SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class Metrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: 'exgate_requests_total',
    help: 'Requests by service, decision and reason.',
    labelNames: ['service', 'decision', 'reason'],
    registers: [this.registry],
    collect: () => this.#fold(),
  });
  readonly authDuration = new Histogram({
    name: 'exgate_auth_duration_seconds',
    help: 'Time to authenticate a request (cache hits included).',
    labelNames: ['cache'],
    buckets: SECONDS,
    registers: [this.registry],
  });
  readonly upstreamDuration = new Histogram({
    name: 'exgate_upstream_duration_seconds',
    help: "Time from forwarding to Exchange's response headers.",
    labelNames: ['service'],
    buckets: [...SECONDS, 30, 60, 300, 3600],
    registers: [this.registry],
  });
  readonly cache = new Counter({
    name: 'exgate_auth_cache_total',
    help: 'Authentications by where the answer came from (hit, miss, stale).',
    labelNames: ['result'],
    registers: [this.registry],
    collect: () => this.#fold(),
  });
  readonly lockouts = new Counter({
    name: 'exgate_lockouts_total',
    help: "Requests refused by the gateway's smart lockout (account: 401, source: 429).",
    labelNames: ['kind'],
    registers: [this.registry],
  });
  readonly directoryErrors = new Counter({
    name: 'exgate_directory_errors_total',
    help: 'Requests answered 503 because the directory was unavailable.',
    registers: [this.registry],
  });
  readonly accessLogWriteErrors = new Counter({
    name: 'exgate_access_log_write_errors_total',
    help: 'Failed writes to the access log (the records went to stderr).',
    registers: [this.registry],
  });
  readonly proxyRefused = new Counter({
    name: 'exgate_proxy_protocol_refused_total',
    help: 'Connections refused for their PROXY protocol header (listen.proxyProtocol), by reason.',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  readonly openConnections = new Gauge({
    name: 'exgate_open_connections',
    help: 'Client TLS connections open now.',
    registers: [this.registry],
  });
  readonly inFlight = new Gauge({
    name: 'exgate_requests_in_flight',
    help: "Forwarded requests waiting for or streaming Exchange's answer (long-polls included).",
    labelNames: ['service'],
    registers: [this.registry],
    collect: () => this.#fold(),
  });
  /** By status code, whoever answered (the gateway or Exchange): the 5xx alert's ratio. */
  readonly responses = new Counter({
    name: 'exgate_responses_total',
    labelNames: ['service', 'code'],
    registers: [this.registry],
    help: 'Responses by service and HTTP status code (499: the client left before an answer).',
    collect: () => this.#fold(),
  });
  /**
   * A Unix timestamp, not "seconds left": Prometheus's guidance for when something happens, and
   * the value stays put between scrapes (alert on `… - time()`). Read at each scrape; with workers
   * the earliest wins.
   */
  readonly certificateExpiry = new Gauge({
    name: 'exgate_certificate_expiry_timestamp_seconds',
    labelNames: ['cert'],
    aggregator: 'min',
    registers: [this.registry],
    help: 'notAfter of the gateway\'s certificate (cert="gateway") and of Exchange\'s as last seen (cert="upstream").',
    collect: () => this.#collectCertificates(),
  });
  readonly reloadFailures = new Counter({
    name: 'exgate_config_reload_failures_total',
    registers: [this.registry],
    help: 'Reloads (SIGHUP or a changed file) that failed and kept the running configuration.',
  });
  readonly lastReloadOk = new Gauge({
    name: 'exgate_config_last_reload_successful',
    aggregator: 'min',
    registers: [this.registry],
    help: '1 when the last reload succeeded (or none ran yet), 0 while the last one failed.',
  });
  /**
   * Set by the admin listener's probes (/readyz, and each /metrics scrape). With workers only the
   * primary probes; a gauge without labels always has a value (0 in the workers), hence `max`.
   */
  readonly directoryUp = new Gauge({
    name: 'exgate_directory_up',
    aggregator: 'max',
    registers: [this.registry],
    help: '1 when the directory answered the last probe, 0 when not.',
  });
  /**
   * Without labels: /readyz's answer for Exchange (any HTTP status with one `url`; with health checks,
   * a healthy server for every service some rule allows). With {server,service}: the pool's health.
   */
  readonly upstreamUp = new Gauge({
    name: 'exgate_upstream_up',
    aggregator: 'max',
    labelNames: ['server', 'service'],
    registers: [this.registry],
    help: 'Without labels: 1 when Exchange passed the last readiness probe. {server,service}: 1 while healthy.',
    collect: () => this.#collectUpstream(),
  });
  readonly upstreamConnections = new Gauge({
    name: 'exgate_upstream_connections',
    aggregator: 'sum',
    labelNames: ['server'],
    registers: [this.registry],
    help: 'Upstream connections open to each Exchange server (one per client connection and server).',
  });
  #upstreamReady = 0;
  /** Where the upstream gauges read the pool at each scrape. */
  upstreamPool?: () => Pool;

  /** Each worker has its own Redis connection: `min`, so one that lost it shows. */
  readonly stateUp = new Gauge({
    name: 'exgate_state_up',
    aggregator: 'min',
    registers: [this.registry],
    help: '1 while the state shared with the other gateways (state.redis) is reachable, 0 while each decides alone.',
  });

  /** Every worker holds every session (they share them), so the workers' values agree: `max`. */
  readonly sessions = new Gauge({
    name: 'exgate_sessions',
    aggregator: 'max',
    registers: [this.registry],
    help: 'Live browser sessions (forms sign-in to OWA and ECP).',
    collect: () => {
      if (this.liveSessions) this.sessions.set(this.liveSessions());
    },
  });
  /** Where the sessions gauge reads its value at each scrape. */
  liveSessions: (() => number) | null = null;

  /** Where the certificate gauge reads its dates at each scrape (null: none, e.g. plain-HTTP upstream). */
  certificates: { gateway?: () => Date | null; upstream?: () => Date | null } = {};

  constructor(defaults = true) {
    if (defaults) collectDefaultMetrics({ register: this.registry, prefix: '' });
    this.lastReloadOk.set(1);
    this.stateUp.set(1); // without state.redis the state is this gateway's own, always there
  }

  /** Records a probe's answer (admin.ts). */
  probed(check: string, ok: boolean): void {
    if (check === 'directory') this.directoryUp.set(ok ? 1 : 0);
    if (check === 'upstream') this.upstreamUp.set((this.#upstreamReady = ok ? 1 : 0));
  }

  #collectUpstream(): void {
    const pool = this.upstreamPool?.();
    if (!pool) return;
    this.upstreamUp.reset(); // a server a reload removed leaves no series behind
    this.upstreamConnections.reset();
    this.upstreamUp.set(this.#upstreamReady);
    for (const m of pool.members) {
      this.upstreamConnections.set({ server: m.server.key }, m.connections);
      if (pool.settings.healthCheck === null) continue; // one `url`: never probed per service
      for (const [service, health] of m.health)
        this.upstreamUp.set({ server: m.server.key, service }, health.up ? 1 : 0);
    }
  }

  #collectCertificates(): void {
    this.certificateExpiry.reset();
    for (const cert of ['gateway', 'upstream'] as const) {
      const notAfter = this.certificates[cert]?.() ?? null;
      if (notAfter !== null) this.certificateExpiry.set({ cert }, Math.floor(notAfter.getTime() / 1000));
    }
  }

  /**
   * Per-request counts wait here and are folded into their metrics when a scrape reads them: a
   * labelled prom-client inc() hashes and validates its labels, ~1 µs each, five per proxied
   * request (issue 16). Keys are label values joined by NUL; the label sets are closed vocabularies.
   */
  readonly #pending = new Map<
    string,
    { metric: Counter<string> | Gauge<string>; labels: LabelValues<string>; n: number }
  >();

  #add(metric: Counter<string> | Gauge<string>, key: string, labels: () => LabelValues<string>, n = 1): void {
    const p = this.#pending.get(key);
    if (p) p.n += n;
    else this.#pending.set(key, { metric, labels: labels(), n });
  }

  #fold(): void {
    for (const p of this.#pending.values()) {
      if (p.n === 0 && !(p.metric instanceof Gauge)) continue;
      p.metric.inc(p.labels, p.n);
      p.n = 0;
    }
  }

  /** A forwarded request starts (+1) or ends (-1): exgate_requests_in_flight. */
  forwarding(service: string, n: 1 | -1): void {
    this.#add(this.inFlight, `f\0${service}`, () => ({ service }), n);
  }

  /** Counts a finished request from its access record. */
  observe(r: AccessRecord): void {
    const service = r.service ?? 'none';
    const reason = r.reason ?? 'none';
    this.#add(this.requests, `q\0${service}\0${r.decision}\0${reason}`, () => ({
      service,
      decision: r.decision,
      reason,
    }));
    const code = r.status;
    this.#add(this.responses, `s\0${service}\0${code}`, () => ({ service, code: String(code) }));
    const cache = r.cache;
    if (cache !== null) this.#add(this.cache, `c\0${cache}`, () => ({ result: cache }));
    if (r.reason === 'gateway-lockout') this.lockouts.inc({ kind: r.status === 429 ? 'source' : 'account' });
    if (r.reason === 'directory-unavailable') this.directoryErrors.inc();
    if (r.upstreamMs !== null && r.service !== null)
      this.upstreamDuration.observe({ service: r.service }, r.upstreamMs / 1000);
  }
}
