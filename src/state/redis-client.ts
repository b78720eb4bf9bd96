/**
 * Connections to the Redis of `state.redis` (ioredis 6): one for commands and scripts, one for the
 * events channel. Fail fast (research/owa-pool-ha.md C): no offline queue, a short command timeout, one
 * try per command; the bus decides alone meanwhile, and ioredis keeps reconnecting (and asking Sentinel).
 */
import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from 'pino';
import type { RedisSettings } from '../config/state-load.js';
import { EMIT, FAIL, RESERVE, SESSION, SLOT } from './redis-scripts.js';

export interface RedisBusOptions {
  readonly redis: RedisSettings;
  /** Gateways sharing the Redis (`state.instances`): the fallback threshold's divisor. */
  readonly instances: number;
  readonly log: Pick<Logger, 'warn' | 'info'>;
  /** Told true or false as Redis comes and goes (the exgate_state_up gauge). */
  readonly onUp?: (up: boolean) => void;
  /** How long a dead gateway's reservations and slots outlive it. Default: 15000. */
  readonly holdMs?: number;
  /** Lockout events kept for gateways that start later, at most. Default: 100000. */
  readonly keepMax?: number;
}

type Arg = string | number;

/** The scripts, sent as EVALSHA with an EVAL on NOSCRIPT (ioredis Script): a promoted replica has no cache. */
export interface Scripts {
  exReserve(fail: string, holds: string, ...argv: Arg[]): Promise<string[]>;
  exFail(fail: string, ...argv: Arg[]): Promise<unknown>;
  exSlot(slot: string, ...argv: Arg[]): Promise<number>;
  exEmit(kept: string, ...argv: Arg[]): Promise<unknown>;
  exSession(session: string, ...argv: Arg[]): Promise<unknown>;
}

export type Client = Redis & Scripts;

/** ioredis options for these settings; `extra` wins (the subscriber queues its SUBSCRIBE, for one). */
export function redisOptions(s: RedisSettings, extra: RedisOptions = {}): RedisOptions {
  const tls = s.tls ? { ...(s.ca ? { ca: s.ca } : {}) } : undefined;
  const password = s.password?.reveal() || undefined;
  const common: RedisOptions = {
    // RESP2, deliberately: ioredis 6 defaults to RESP3; RESP2 is what every Redis and Sentinel speaks.
    protocol: 2,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: s.commandTimeoutMs,
    connectTimeout: 2000,
    retryStrategy: (n) => Math.min(n * 100, 1000),
    lazyConnect: false,
    ...(password ? { password } : {}),
  };
  const where: RedisOptions = s.url
    ? { ...urlOptions(s.url), ...(tls ? { tls } : {}) }
    : {
        sentinels: s.sentinels.map((x) => ({ host: x.host, port: x.port })),
        name: s.name ?? undefined,
        ...(password ? { sentinelPassword: password } : {}),
        ...(tls ? { tls, sentinelTLS: tls, enableTLSForSentinelMode: true } : {}),
        sentinelRetryStrategy: (n: number) => Math.min(n * 100, 1000),
        // Reconnect as soon as a Sentinel announces +switch-master, not at the next failed command.
        failoverDetector: true,
      };
  return { ...common, ...where, ...extra };
}

function urlOptions(url: string): RedisOptions {
  const u = new URL(url);
  const db = Number(u.pathname.replace(/^\//, '') || '0');
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 6379), db };
}

/** A command connection with the bus's scripts defined. */
export function commandClient(s: RedisSettings): Client {
  const r = new Redis(redisOptions(s));
  r.defineCommand('exReserve', { numberOfKeys: 2, lua: RESERVE });
  r.defineCommand('exFail', { numberOfKeys: 1, lua: FAIL });
  r.defineCommand('exSlot', { numberOfKeys: 1, lua: SLOT });
  r.defineCommand('exEmit', { numberOfKeys: 1, lua: EMIT });
  r.defineCommand('exSession', { numberOfKeys: 1, lua: SESSION });
  return r as Client;
}

/** The subscriber: it queues its SUBSCRIBE until connected, and re-subscribes after a reconnect. */
export function subscriberClient(s: RedisSettings): Redis {
  return new Redis(redisOptions(s, { enableOfflineQueue: true, commandTimeout: undefined, autoResubscribe: true }));
}

/** What `exgate check` says about the Redis it reached: its version and role (master, or a replica). */
export async function probeRedis(s: RedisSettings): Promise<{ version: string; role: string; where: string }> {
  // No retries of any kind, Sentinel's included: `check` asks once and answers (it hung on dead Sentinels).
  const once = { retryStrategy: () => null, sentinelRetryStrategy: () => null, lazyConnect: true };
  const r = new Redis(redisOptions(s, { ...once, maxRetriesPerRequest: 0 }));
  let first: Error | null = null; // the server's own answer (WRONGPASS, a TLS error), not "Connection is closed"
  r.on('error', (err: Error) => {
    first ??= err;
  });
  try {
    await r.connect();
    const info = await r.info('server');
    const version = /^redis_version:(.+)$/m.exec(info)?.[1]?.trim() ?? 'unknown';
    const role = String(((await r.role()) as unknown[])[0]);
    const where = s.url ? new URL(s.url).host : `master ${s.name} via ${s.sentinels.length} sentinel(s)`;
    return { version, role, where };
  } catch (err) {
    throw first ?? err;
  } finally {
    r.disconnect();
  }
}
