/**
 * `exgate check` for a pool (`upstream.servers`, or a `healthCheck`): every server reached and its certificate
 * judged as with one `url`, then each health page probed once, as the gateway's checker probes it, and printed
 * as a table. A server that cannot be connected to or trusted is a problem; a failing health page is a warning:
 * the gateway routes around it (maintenance, a stopped component), and it needs no change of config.
 */
import type { Config } from '../config/load.js';
import { readYaml } from '../config/yaml.js';
import type { ConfigProblem } from '../errors.js';
import { HEALTH_GROUPS, PROBE_PATH, probeOnce, type HealthGroup, type ProbeResult } from '../upstream/health.js';
import type { Member } from '../upstream/pool.js';
import { Upstream } from '../upstream/upstream.js';
import { reach, trustOf, type Locate, type ServerPlace, type UpstreamResult } from './check-upstream.js';

/** A cell for a server that was not probed: it could not be connected to, or its certificate is refused. */
const UNREACHED = 'connect error';

interface Row {
  readonly member: Member;
  readonly place: ServerPlace;
  readonly problems: ConfigProblem[];
  /** Per health group, the cell: `200`, `503`, `closed without an answer`, `timeout`, `connect error`. */
  readonly cells: ReadonlyMap<HealthGroup, string>;
}

/** Reaches every server, probes every health page of those reached, and says what an admin should know. */
export async function checkPool(config: Config, at: Locate): Promise<UpstreamResult> {
  const upstream = config.upstream;
  // The probes' connection options exactly as the gateway builds them; its own checker is stopped before
  // any probe runs (the timers it set are cleared at once), so each page is asked once, here.
  const gateway = new Upstream(upstream, 10_000);
  gateway.close();
  const listed = Array.isArray((readYaml(config.file).data as { upstream?: { servers?: unknown } }).upstream?.servers);
  const several = gateway.pool.members.length > 1;
  const rows = await Promise.all(
    gateway.pool.members.map((member, i) =>
      checkServer(upstream, member, at, {
        key: listed ? ['upstream', 'servers', i] : ['upstream', 'url'],
        prefix: several ? `${member.server.key}: ` : '',
      }),
    ),
  );
  const problems = rows.flatMap((r) => r.problems);
  const warnings = [...rows.flatMap((r) => unhealthy(r, at)), ...uncovered(rows, at, listed)];
  const names = new Set(upstream.servers.map((s) => s.servername));
  const as = names.size === 1 ? ` as ${[...names].join('')}` : '';
  const count = `${upstream.servers.length} server${upstream.servers.length === 1 ? '' : 's'}`;
  return { problems, warnings, note: `${count}${as}, ${trustOf(upstream)}`, details: table(rows) };
}

async function checkServer(upstream: Config['upstream'], member: Member, at: Locate, place: ServerPlace) {
  const reached = await reach(upstream, member.server, at, place);
  reached.socket?.destroy();
  const cells = new Map<HealthGroup, string>();
  if (reached.problems.length > 0) {
    for (const g of HEALTH_GROUPS) cells.set(g, UNREACHED);
    return { member, place, problems: reached.problems, cells };
  }
  const timeoutMs = upstream.healthCheck?.timeoutMs ?? upstream.connectTimeoutMs;
  const { origin, servername } = member.server;
  const results = await Promise.all(
    HEALTH_GROUPS.map((g) => probeOnce(origin, member.probeOptions, servername, PROBE_PATH[g], timeoutMs)),
  );
  HEALTH_GROUPS.forEach((g, i) => cells.set(g, cellOf(results[i] as ProbeResult)));
  return { member, place, problems: [], cells } satisfies Row;
}

/** A probe's outcome in a word or three; the gateway's log line carries the full cause. */
function cellOf(result: ProbeResult): string {
  if (result.ok) return '200';
  if (result.unreachable) return UNREACHED;
  const cause = result.cause ?? '';
  if (cause.startsWith('HTTP ')) return cause.slice('HTTP '.length);
  if (/^(ETIMEDOUT|UND_ERR_HEADERS_TIMEOUT|UND_ERR_BODY_TIMEOUT)\b/.test(cause)) return 'timeout';
  return cause.split(':')[0] ?? cause; // `closed without an answer`, or an error's code
}

/** One warning per reached server with failing pages, grouped by what they answered. */
function unhealthy(row: Row, at: Locate): ConfigProblem[] {
  if (row.problems.length > 0) return [];
  const failing = HEALTH_GROUPS.filter((g) => row.cells.get(g) !== '200');
  if (failing.length === 0) return [];
  const server = row.member.server.key;
  const causes = new Set(failing.map((g) => row.cells.get(g)));
  if (failing.length === HEALTH_GROUPS.length && causes.size === 1) {
    const cause = [...causes].join('');
    const maintenance = cause === 'closed without an answer' ? ' (in maintenance: ServerWideOffline Inactive?)' : '';
    return [at(row.place.key, `${server} fails every health check: ${cause}${maintenance}; it gets no new work`)];
  }
  const each = failing.map((g) => `${g} (${row.cells.get(g)})`).join(', ');
  return [at(row.place.key, `${server} fails the health check of ${each}; it gets no new work for them`)];
}

/** Services no server passes the health check of: the gateway answers 503 upstream-unavailable for them. */
function uncovered(rows: readonly Row[], at: Locate, listed: boolean): ConfigProblem[] {
  const none = HEALTH_GROUPS.filter((g) => !rows.some((r) => r.cells.get(g) === '200'));
  if (none.length === 0 || none.length === HEALTH_GROUPS.length) return []; // all down: the problems say why
  const key = listed ? ['upstream', 'servers'] : ['upstream', 'url'];
  return [at(key, `no server passes the health check of ${none.join(', ')}: 503 upstream-unavailable for them`)];
}

/** Services down, servers across: `  service  ex1:443  ex2:443` then one line per health page. */
function table(rows: readonly Row[]): string[] {
  const header = ['service', ...rows.map((r) => r.member.server.key)];
  const lines = [header, ...HEALTH_GROUPS.map((g) => [g, ...rows.map((r) => r.cells.get(g) ?? '')])];
  const widths = header.map((_, c) => Math.max(...lines.map((l) => (l[c] ?? '').length)));
  return lines.map((l) => `  ${l.map((text, c) => text.padEnd(widths[c] ?? 0)).join('  ')}`.trimEnd());
}
