/**
 * Health of one Exchange server for one protocol, from Managed Availability's own probes
 * (`GET /<vdir>/healthcheck.htm`, research/owa-pool-ha.md B): 200 is healthy; any other status, a
 * connection closed without an answer (what Exchange does for an inactive component) or silence
 * past timeoutMs is a failure. `failures`/`successes` count consecutive results of one pair.
 */
import { Client } from 'undici';
import type { HealthCheckSettings } from '../config/upstream.js';
import type { Service } from '../pipeline/services.js';

/** The protocols Exchange answers probes for, each with its own health (a pool per protocol). */
export const HEALTH_GROUPS = [
  'mapi',
  'rpc',
  'ews',
  'activesync',
  'owa',
  'ecp',
  'oab',
  'autodiscover',
  'powershell',
] as const;
export type HealthGroup = (typeof HEALTH_GROUPS)[number];

/** The probe page of each protocol: the vdir's own, as Microsoft's load-balancing guidance says. */
export const PROBE_PATH: Readonly<Record<HealthGroup, string>> = {
  mapi: '/mapi/healthcheck.htm',
  rpc: '/rpc/healthcheck.htm',
  ews: '/EWS/healthcheck.htm',
  activesync: '/Microsoft-Server-ActiveSync/healthcheck.htm',
  owa: '/owa/healthcheck.htm',
  ecp: '/ecp/healthcheck.htm',
  oab: '/OAB/healthcheck.htm',
  autodiscover: '/Autodiscover/healthcheck.htm',
  powershell: '/PowerShell/healthcheck.htm',
};

/** The probe a service's health follows: MRSProxy lives in /ews/; the REST /api/ has no probe page of its
 * own and is served beside EWS (an assumption: Exchange's probe table names no REST component). */
export function healthGroupOf(service: Service): HealthGroup {
  if (service === 'mrsproxy' || service === 'api') return 'ews';
  return service;
}

/** One probe's outcome. `unreachable`: TCP or TLS connect failed (the server is gone, not just unhealthy). */
export interface ProbeResult {
  readonly ok: boolean;
  /** What failed, for the operational log: `HTTP 503`, `closed without an answer`, `ECONNREFUSED …`. */
  readonly cause: string | null;
  readonly unreachable: boolean;
}

/** A change of a pair's standing, worth one operational log line. */
export type Transition = 'out' | 'back' | null;

/**
 * The state machine of one server and protocol. A server starts healthy (as HAProxy's servers do):
 * the gateway serves from its first second, and the first `failures` probes take a dead one out.
 */
export class Health {
  up = true;
  /** The last failure's cause, kept for the log line and `exgate check`. */
  cause: string | null = null;
  /** When the standing last changed (ms, the injected clock's). */
  since: number;
  #fails = 0;
  #oks = 0;

  constructor(now = 0) {
    this.since = now;
  }

  /** Counts one result; says whether the pair just went out or came back. */
  record(
    ok: boolean,
    cause: string | null,
    limits: Pick<HealthCheckSettings, 'failures' | 'successes'>,
    now: number,
  ): Transition {
    if (ok) {
      this.#fails = 0;
      this.#oks++;
      if (this.up || this.#oks < limits.successes) return null;
      this.up = true;
      this.since = now;
      return 'back';
    }
    this.#oks = 0;
    this.#fails++;
    this.cause = cause;
    if (!this.up || this.#fails < limits.failures) return null;
    this.up = false;
    this.since = now;
    return 'out';
  }
}

/**
 * When the first probe of pair `index` of `total` runs: the pairs are spread evenly over one
 * interval, plus up to a tenth of it at random, so no two gateways (or workers) probe in step.
 */
export function firstDelayMs(index: number, total: number, intervalMs: number, random = Math.random()): number {
  return Math.floor((intervalMs * index) / Math.max(1, total) + (intervalMs / 10) * random);
}

/** The pause before a pair's next probe: the interval, give or take 5 % (jitter keeps them apart). */
export function nextDelayMs(intervalMs: number, random = Math.random()): number {
  return Math.floor(intervalMs * (0.95 + 0.1 * random));
}

/** Marks an error as raised while connecting (TCP or TLS): nothing of any request was sent on it. */
export const CONNECT_FAILED = Symbol('exgate.connectFailed');

export function isConnectFailure(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as Record<symbol, unknown>)[CONNECT_FAILED] === true;
}

/** Probes one page on a connection of its own (as Kemp and F5 do), bounded by timeoutMs end to end. */
export async function probeOnce(
  origin: string,
  options: Client.Options,
  host: string,
  path: string,
  timeoutMs: number,
): Promise<ProbeResult> {
  const client = new Client(origin, { ...options, headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
  client.on('connectionError', () => {});
  const timer = setTimeout(() => void client.destroy(timedOut(timeoutMs)).catch(() => {}), timeoutMs);
  try {
    const res = await client.request({ path, method: 'GET', headers: { host } });
    await res.body.dump();
    return res.statusCode === 200
      ? { ok: true, cause: null, unreachable: false }
      : { ok: false, cause: `HTTP ${res.statusCode}`, unreachable: false };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const closed = e.code === 'UND_ERR_SOCKET' || e.code === 'ECONNRESET';
    const cause = closed && !isConnectFailure(err) ? 'closed without an answer' : `${e.code ?? e.name}: ${e.message}`;
    return { ok: false, cause, unreachable: isConnectFailure(err) };
  } finally {
    clearTimeout(timer);
    await client.destroy().catch(() => {});
  }
}

function timedOut(ms: number): Error {
  return Object.assign(new Error(`no answer within ${ms} ms (healthCheck.timeoutMs)`), { code: 'ETIMEDOUT' });
}
