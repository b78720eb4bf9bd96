/**
 * Resolves `state:` (state-schema.ts): the Redis password from its variable or file, the CA read, and
 * the plaintext rule (as for LDAP: no password nor lockout event crosses a network in clear).
 */
import { readFileSync } from 'node:fs';
import type { StateFile } from './state-schema.js';
import { Secret } from './yaml.js';

/** Where the gateways' shared state lives (src/state/redis-client.ts connects to it). */
export interface RedisSettings {
  /** One server, or null with `sentinels`. */
  readonly url: string | null;
  readonly sentinels: readonly { readonly host: string; readonly port: number }[];
  readonly name: string | null;
  /** TLS to Redis (and to the Sentinels). */
  readonly tls: boolean;
  readonly ca: string | undefined;
  readonly password: Secret | null;
  readonly keyPrefix: string;
  readonly commandTimeoutMs: number;
}

export interface StateSettings {
  readonly redis: RedisSettings | null;
  readonly instances: number;
}

type At = (path: readonly PropertyKey[], message: string) => void;

export function resolveState(
  raw: StateFile,
  rel: (p: string) => string,
  readPem: (p: string | undefined, key: readonly PropertyKey[]) => string | undefined,
  at: At,
  env: NodeJS.ProcessEnv,
): StateSettings {
  const r = raw.redis;
  if (!r) return { redis: null, instances: raw.instances };
  const key = (...k: PropertyKey[]) => ['state', 'redis', ...k];
  if ((r.url === undefined) === (r.sentinels === undefined)) at(key(), 'give exactly one of url and sentinels');
  if (r.sentinels && !r.name) at(key('name'), 'sentinels need the master name (sentinel monitor <name> …)');
  if (r.url && r.name) at(key('name'), 'name goes with sentinels, not with url');
  if (r.url && r.tls !== undefined) at(key('tls'), 'with url, the scheme says it: rediss:// is TLS');
  const tls = r.url ? r.url.startsWith('rediss:') : (r.tls ?? r.ca !== undefined);
  const sentinels = (r.sentinels ?? []).map(hostPort);
  const hosts = r.url ? [new URL(r.url).hostname] : sentinels.map((s) => s.host);
  if (!tls && !r.allowPlaintext && hosts.some((h) => !isLoopback(h))) {
    at(
      key(r.url ? 'url' : 'sentinels'),
      'Redis without TLS carries sessions and lockout events in clear; use rediss:// (or tls: true with sentinels), ' +
        'or allowPlaintext: true (lab only)',
    );
  }
  return {
    redis: {
      url: r.url ?? null,
      sentinels,
      name: r.name ?? null,
      tls,
      ca: readPem(r.ca, key('ca')),
      password: password(r, rel, at, env),
      keyPrefix: r.keyPrefix,
      commandTimeoutMs: r.commandTimeoutMs,
    },
    instances: raw.instances,
  };
}

function password(r: NonNullable<StateFile['redis']>, rel: (p: string) => string, at: At, env: NodeJS.ProcessEnv) {
  if (r.passwordEnv !== undefined && r.passwordFile !== undefined) {
    at(['state', 'redis'], 'give at most one of passwordEnv and passwordFile');
    return null;
  }
  if (r.passwordEnv !== undefined) {
    const value = env[r.passwordEnv];
    if (!value) at(['state', 'redis', 'passwordEnv'], `environment variable ${r.passwordEnv} is not set`);
    return new Secret(value ?? '');
  }
  if (r.passwordFile === undefined) return null;
  try {
    const value = readFileSync(rel(r.passwordFile), 'utf8').replace(/\r?\n$/, '');
    if (!value) at(['state', 'redis', 'passwordFile'], 'file is empty');
    return new Secret(value);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    at(['state', 'redis', 'passwordFile'], `cannot read ${rel(r.passwordFile)}: ${code}`);
    return null;
  }
}

function hostPort(s: string): { host: string; port: number } {
  const colon = s.lastIndexOf(':');
  return { host: s.slice(0, colon).replace(/^\[|\]$/g, ''), port: Number(s.slice(colon + 1)) };
}

/** 127.0.0.0/8, ::1 and localhost (as load.ts): traffic that never leaves the machine. */
function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}
