/**
 * TLS session-ticket keys shared by every gateway of one Redis (issue 15): one key per rotation period,
 * named by the period's number, set once by whichever gateway asks first (SET NX) and read by the
 * others, so all of them change keys at the same boundary and a client resumes on any of them. While
 * Redis is away a gateway keeps its key (or makes its own): it serves, resuming only its own sessions.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { RedisSettings } from '../config/state-load.js';
import { HeldTicketKeys, RotatingTicketKeys, TICKET_KEY_BYTES, type TicketKeys } from '../runtime/ticket-keys.js';
import { redisOptions } from './redis-client.js';

/** How long a starting gateway waits for Redis before it starts on a key of its own. */
const READY_MS = 2000;
/** How often a gateway asks again, within a period (a gateway that could not reach Redis catches up). */
const RETRY_MS = 30_000;

export class RedisTicketKeys extends HeldTicketKeys {
  readonly #redis: Redis;
  #timer: NodeJS.Timeout | null = null;
  #period = -1;
  #closed = false;

  private constructor(
    settings: RedisSettings,
    private readonly rotateMs: number,
    private readonly log: Pick<Logger, 'info' | 'warn'>,
    private readonly now: () => number,
  ) {
    super(randomBytes(TICKET_KEY_BYTES)); // until Redis answers: this gateway's own
    this.#redis = new Redis(redisOptions(settings, { lazyConnect: false }));
    this.#redis.on('error', () => {}); // the bus reports Redis's state; keys just wait for it
    this.key = (period: number) => `${settings.keyPrefix}tls:ticket-key:${period}`;
  }

  private readonly key: (period: number) => string;

  /** The shared key of the current period, or (Redis away) this gateway's own until it answers. */
  static async open(
    settings: RedisSettings,
    rotateMs: number,
    log: Pick<Logger, 'info' | 'warn'>,
    now: () => number = Date.now,
  ): Promise<RedisTicketKeys> {
    const keys = new RedisTicketKeys(settings, rotateMs, log, now);
    await keys.#ready(READY_MS); // without an offline queue, a command before 'ready' fails at once
    await keys.#refresh();
    return keys;
  }

  /** Resolves once connected, or after `ms` (Redis away: the gateway starts on its own key). */
  #ready(ms: number): Promise<void> {
    if (this.#redis.status === 'ready') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#redis.off('ready', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#redis.once('ready', done);
    });
  }

  async #refresh(): Promise<void> {
    if (this.#closed) return;
    const t = this.now();
    const period = Math.floor(t / this.rotateMs);
    try {
      const name = this.key(period);
      const mine = randomBytes(TICKET_KEY_BYTES).toString('base64');
      // Kept two periods: a gateway whose clock is a little behind still finds it.
      await this.#redis.set(name, mine, 'PX', this.rotateMs * 2, 'NX');
      const shared = await this.#redis.get(name);
      const key = shared ? Buffer.from(shared, 'base64') : null;
      if (key?.length === TICKET_KEY_BYTES && (period !== this.#period || !key.equals(this.current()))) {
        const rotated = this.#period >= 0 && period !== this.#period;
        this.#period = period;
        this.set(key);
        if (rotated) this.log.info('rotated the TLS session-ticket key (shared through Redis)');
      }
    } catch {
      // Redis away: keep the key in use; the next try follows.
    }
    const untilNext = (period + 1) * this.rotateMs - t;
    this.#timer = setTimeout(() => void this.#refresh(), Math.min(untilNext + 50, RETRY_MS));
    this.#timer.unref();
  }

  override close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#redis.disconnect();
    super.close();
  }
}

/** One process's ticket keys: with state.redis every gateway's, else its own, rotated (a rotation is logged, never the key). */
export async function ticketKeysFor(
  rotateMs: number,
  log: Pick<Logger, 'info' | 'warn'>,
  redis?: RedisSettings | null,
): Promise<TicketKeys> {
  if (redis) return RedisTicketKeys.open(redis, rotateMs, log);
  return new RotatingTicketKeys(rotateMs, () => log.info('rotated the TLS session-ticket key'));
}
