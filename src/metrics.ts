/**
 * Prometheus metrics (prom-client), for the admin listener's /metrics. Most are counted from the
 * access record when it is written, so the metrics and the log never disagree. With workers,
 * each worker keeps its own registry and the primary aggregates them (admin.ts).
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { AccessRecord } from './access-log.js';

const SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class Metrics {
  readonly registry = new Registry();
  readonly requests = new Counter({ name: 'exgate_requests_total', help: 'Requests by service, decision and reason.', labelNames: ['service', 'decision', 'reason'], registers: [this.registry] });
  readonly authDuration = new Histogram({ name: 'exgate_auth_duration_seconds', help: 'Time to authenticate a request (cache hits included).', labelNames: ['cache'], buckets: SECONDS, registers: [this.registry] });
  readonly upstreamDuration = new Histogram({ name: 'exgate_upstream_duration_seconds', help: 'Time from forwarding to Exchange\'s response headers.', labelNames: ['service'], buckets: [...SECONDS, 30, 60, 300, 3600], registers: [this.registry] });
  readonly cache = new Counter({ name: 'exgate_auth_cache_total', help: 'Authentications by where the answer came from (hit, miss, stale).', labelNames: ['result'], registers: [this.registry] });
  readonly lockouts = new Counter({ name: 'exgate_lockouts_total', help: 'Requests refused by the gateway\'s smart lockout (account: 401, source: 429).', labelNames: ['kind'], registers: [this.registry] });
  readonly directoryErrors = new Counter({ name: 'exgate_directory_errors_total', help: 'Requests answered 503 because the directory was unavailable.', registers: [this.registry] });
  readonly accessLogWriteErrors = new Counter({
    name: 'exgate_access_log_write_errors_total', help: 'Failed writes to the access log (the records went to stderr).', registers: [this.registry],
  });
  readonly openConnections = new Gauge({ name: 'exgate_open_connections', help: 'Client TLS connections open now.', registers: [this.registry] });
  readonly inFlight = new Gauge({ name: 'exgate_requests_in_flight', help: 'Forwarded requests waiting for or streaming Exchange\'s answer (long-polls included).', labelNames: ['service'], registers: [this.registry] });

  constructor(defaults = true) {
    if (defaults) collectDefaultMetrics({ register: this.registry, prefix: '' });
  }

  /** Counts a finished request from its access record. */
  observe(r: AccessRecord): void {
    this.requests.inc({ service: r.service ?? 'none', decision: r.decision, reason: r.reason ?? 'none' });
    if (r.cache !== null) this.cache.inc({ result: r.cache });
    if (r.reason === 'gateway-lockout') this.lockouts.inc({ kind: r.status === 429 ? 'source' : 'account' });
    if (r.reason === 'directory-unavailable') this.directoryErrors.inc();
    if (r.upstreamMs !== null && r.service !== null) this.upstreamDuration.observe({ service: r.service }, r.upstreamMs / 1000);
  }
}
