/**
 * `state:` in the gateway file: what several gateways share through Redis (INTERFACE.md, "Several
 * gateways: shared state"). Without it each gateway keeps its state alone (its workers share through
 * the primary). A `redis://` URL to a host that is not loopback is refused unless `allowPlaintext`.
 */
import { z } from 'zod';

const nonEmpty = z.string().min(1, 'must not be empty');
const envName = z
  .string()
  .regex(
    /^[A-Za-z_][A-Za-z0-9_]*$/,
    'expected the name of an environment variable (letters, digits, _), not its value',
  );
const hostPort = z
  .string()
  .regex(/^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'expected host:port (an IPv6 address in brackets)');

const redis = z.strictObject({
  /** One Redis: `rediss://host:port` (TLS) or `redis://host:port`, optionally `/db`; no user or password in it. */
  url: z
    .string()
    .regex(/^rediss?:\/\/[^/?#\s@]+(\/\d{1,2})?\/?$/, 'expected redis://host[:port][/db] or rediss://… (no password)')
    .optional(),
  /** Or Sentinels (`host:port`, three on small hosts) that name the master. */
  sentinels: z.array(hostPort).min(1).optional(),
  /** The master's name in the Sentinels' config (`sentinel monitor <name> …`). Needed with `sentinels`. */
  name: nonEmpty.optional(),
  /** With `sentinels`: TLS to the Sentinels and to the master. Default: true when `ca` is set, else false. */
  tls: z.boolean().optional(),
  /** PEM file of the CA that issued Redis's (and the Sentinels') certificates. Default: Node's CA list. */
  ca: nonEmpty.optional(),
  /** The NAME of the environment variable holding Redis's password (`requirepass`; Sentinels' too). */
  passwordEnv: envName.optional(),
  /** Or a file holding it (one line; the trailing newline is ignored). */
  passwordFile: nonEmpty.optional(),
  /** Prefix of every key and of the channel, so one Redis can serve several deployments. Default: "exgate:". */
  keyPrefix: nonEmpty.default('exgate:'),
  /** Lab only: allow Redis without TLS on a host that is not loopback. Default: false. */
  allowPlaintext: z.boolean().default(false),
  /** Longest wait for one Redis command before the gateway decides alone. Default: 500. */
  commandTimeoutMs: z.number().int().min(10).default(500),
});

export const stateSection = z.strictObject({
  redis: redis.optional(),
  /** How many gateways share the Redis: while it is unreachable each counts against
   * max(1, floor(lockout.threshold / instances)). Default: 1. */
  instances: z.number().int().min(1).default(1),
});

export type StateFile = z.infer<typeof stateSection>;
