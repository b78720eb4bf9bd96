/**
 * The `upstream` section resolved: one server (`url`) or a pool (`servers`), each with its origin,
 * its `host:port` key (the access record's `upstream`) and the name its certificate is checked
 * against. `url` alone is a pool of one without health checks: there is nowhere else to send work.
 */
import type { GatewayFile } from './schema.js';

/** One Exchange server behind the gateway. */
export interface UpstreamServer {
  readonly url: URL;
  readonly origin: string;
  /** `host:port`, as in the access record and the metrics' `server` label. */
  readonly key: string;
  /** SNI sent and name verified: `upstream.servername`, or the URL's host. */
  readonly servername: string;
}

/** `upstream.healthCheck` (INTERFACE.md, "Several Exchange servers"). */
export interface HealthCheckSettings {
  readonly intervalSeconds: number;
  readonly timeoutMs: number;
  readonly failures: number;
  readonly successes: number;
}

export interface UpstreamSettings {
  /** The first server (the only one with `url`). */
  readonly url: URL;
  readonly origin: string;
  /** The first server's name; each server has its own in `servers`. */
  readonly servername: string;
  readonly servers: readonly UpstreamServer[];
  /** Null with `url` and no `healthCheck`: the one server is never taken out. */
  readonly healthCheck: HealthCheckSettings | null;
  readonly ca: string | undefined;
  readonly insecureSkipVerify: boolean;
  readonly allowPlaintext: boolean;
  readonly connectTimeoutMs: number;
}

const HEALTH_DEFAULTS: HealthCheckSettings = { intervalSeconds: 10, timeoutMs: 3000, failures: 2, successes: 2 };

/** Resolves the section; `at` records a problem at a key, `ca` is the PEM text already read. */
export function resolveUpstream(
  raw: GatewayFile['upstream'],
  ca: string | undefined,
  at: (path: readonly PropertyKey[], message: string) => void,
): UpstreamSettings {
  const listed = raw.servers ?? [raw.url ?? 'https://invalid.invalid'];
  const keyOf = (i: number): PropertyKey[] => (raw.servers ? ['upstream', 'servers', i] : ['upstream', 'url']);
  const seen = new Set<string>();
  const servers = listed.map((text, i) => {
    const url = new URL(text);
    const server = {
      url,
      origin: url.origin,
      key: `${url.hostname}:${url.port || (url.protocol === 'https:' ? 443 : 80)}`,
      servername: raw.servername ?? url.hostname.replace(/^\[|\]$/g, ''),
    };
    if (url.protocol === 'http:' && !isLoopback(url.hostname) && !raw.allowPlaintext)
      at(keyOf(i), 'http:// sends every Basic password in clear; use https:// (or allowPlaintext: true, lab only)');
    if (seen.has(server.key)) at(keyOf(i), `${server.key} is listed twice`);
    seen.add(server.key);
    return server;
  });
  const first = servers[0] as UpstreamServer;
  return {
    url: first.url,
    origin: first.origin,
    servername: first.servername,
    servers,
    healthCheck: raw.healthCheck ?? (raw.servers ? HEALTH_DEFAULTS : null),
    ca,
    insecureSkipVerify: raw.insecureSkipVerify,
    allowPlaintext: raw.allowPlaintext,
    connectTimeoutMs: raw.connectTimeoutMs,
  };
}

function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}
