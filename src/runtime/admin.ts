/**
 * The admin listener: plain HTTP on `admin.host:admin.port` (loopback by default, never the
 * public port), for load balancers, monitoring and Prometheus.
 *
 *   GET /healthz  200 while the process serves
 *   GET /readyz   200 when the directory answers and Exchange answers (and, with workers, one
 *                 listens); 503 with what is not
 *   GET /metrics  Prometheus text format (prom-client; the primary aggregates workers), after
 *                 running the probes, so `exgate_directory_up` and `exgate_upstream_up` are fresh
 */
import { reply } from '../pipeline/respond.js';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface AdminChecks {
  /** Resolves when the directory answers. */
  directory(): Promise<void>;
  /** Resolves when Exchange answers (any HTTP status). */
  upstream(): Promise<void>;
  /** With workers: resolves while at least one worker is listening. */
  gateway?(): Promise<void>;
  /** The metrics in Prometheus text format, and their content type. */
  metrics(): Promise<{ body: string; contentType: string }>;
  /** Told each probe's answer (the `_up` gauges). */
  probed?(check: 'directory' | 'upstream', ok: boolean): void;
  /** The last reload, shown in /readyz (null before the first); absent where reloads run elsewhere. */
  lastReload?(): LastReload | null;
}

/** A reload's outcome: when, whether it took, and why not (the config error: file and key, no secrets). */
export interface LastReload {
  readonly time: string;
  readonly ok: boolean;
  readonly error?: string;
}

const CHECK_TIMEOUT_MS = 5000;
const TEXT = { 'content-type': 'text/plain' };

/** Starts the admin listener. */
export async function startAdmin(
  host: string,
  port: number,
  checks: AdminChecks,
): Promise<{ server: Server; address: AddressInfo }> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(res, 405, {}, '');
    if (path === '/healthz') return reply(res, 200, TEXT, 'ok\n');
    if (path === '/readyz') {
      void ready(checks).then(({ ok, body }) => {
        reply(res, ok ? 200 : 503, { 'content-type': 'application/json' }, JSON.stringify(body) + '\n');
      });
      return;
    }
    if (path === '/metrics') {
      ready(checks)
        .then(() => checks.metrics())
        .then(
          ({ body, contentType }) => reply(res, 200, { 'content-type': contentType }, body),
          (err: unknown) =>
            reply(res, 500, TEXT, `metrics unavailable: ${err instanceof Error ? err.message : String(err)}\n`),
        );
      return;
    }
    reply(res, 404, TEXT, 'GET /healthz, /readyz or /metrics\n');
  });
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return { server, address: server.address() as AddressInfo };
}

async function ready(checks: AdminChecks): Promise<{ ok: boolean; body: Record<string, unknown> }> {
  const gatewayCheck = checks.gateway?.bind(checks);
  const [directory, upstream, gateway] = await Promise.all([
    probe(checks.directory),
    probe(checks.upstream),
    gatewayCheck ? probe(gatewayCheck) : Promise.resolve(undefined),
  ]);
  checks.probed?.('directory', directory === 'ok');
  checks.probed?.('upstream', upstream === 'ok');
  // A failed reload kept the running state, which still serves: reported, never "not ready".
  const ok = directory === 'ok' && upstream === 'ok' && (gateway === undefined || gateway === 'ok');
  const reload = checks.lastReload ? { lastReload: checks.lastReload() } : {};
  return { ok, body: { ...(gateway === undefined ? {} : { gateway }), directory, upstream, ...reload } };
}

async function probe(check: () => Promise<void>): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('timed out')), CHECK_TIMEOUT_MS);
  });
  try {
    await Promise.race([check(), timeout]);
    return 'ok';
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  } finally {
    clearTimeout(timer);
  }
}
