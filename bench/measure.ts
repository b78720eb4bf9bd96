/**
 * Load with wrk and the CPU accounting of research/perf.md §0: a server's process-tree CPU over
 * a measured run ÷ requests, the box's foreign load, a retry when it was noisy; and the table
 * formatting the suites share.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { processTree, selfAndReapedCpuSeconds, systemCpu, treeCpu } from './procstat.js';
import { fmt, machine, median, table } from './stats.js';
import { AUTH, Child, GET_PATH, ROOT, S, sleep, versionOf, which } from './lab.js';
import { haproxyVersion, httpsRequest, lastAccessRecord, nginxVersion, type Server } from './servers.js';

// ---------------------------------------------------------------------------------------------
// wrk and CPU accounting

export interface Wrk {
  readonly requests: number;
  readonly rps: number;
  readonly p50: number;
  readonly p99: number;
  /** Non-2xx/3xx responses plus socket errors. */
  readonly errors: number;
  readonly raw: string;
}

/** What every request carries unless a target says otherwise: warm Basic auth. */
export const BASIC: Readonly<Record<string, string>> = { Authorization: AUTH };

export function wrkArgs(url: string, seconds: number, headers: Readonly<Record<string, string>> = BASIC): string[] {
  const h = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
  return ['-t1', `-c${S.wrkConnections}`, `-d${seconds}s`, '--latency', ...h, url];
}

export async function runWrk(url: string, seconds: number, headers?: Readonly<Record<string, string>>): Promise<Wrk> {
  const child = new Child('wrk', which('wrk')!, wrkArgs(url, seconds, headers));
  const code = await child.exited;
  const raw = child.stdout;
  if (code !== 0) throw new Error(`wrk exited ${code}: ${raw}\n${child.stderr}`);
  const ms = (v: string | undefined, unit: string | undefined) =>
    Number(v) * ({ us: 0.001, ms: 1, s: 1000, m: 60_000 }[unit ?? 'ms'] ?? NaN);
  const lat = (p: string) => {
    const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(raw);
    return ms(m?.[1], m?.[2]);
  };
  const requests = Number(/(\d+) requests in/.exec(raw)?.[1] ?? NaN);
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(raw)?.[1] ?? NaN);
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(raw)?.[1] ?? 0);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(raw);
  const socketErrors = sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0;
  return { requests, rps, p50: lat('50'), p99: lat('99'), errors: non2xx + socketErrors, raw };
}

/** Waits (up to `maxMs`) until the box is quiet; returns the last busy %. */
export async function quiet(maxMs = 5000): Promise<number> {
  const until = Date.now() + maxMs;
  let pct = 100;
  do {
    const a = systemCpu();
    await sleep(400);
    const b = systemCpu();
    pct = ((b.busy - a.busy) / Math.max(1e-9, b.total - a.total)) * 100;
    if (pct < S.quietPct) break;
  } while (Date.now() < until);
  return pct;
}

export interface Target extends Server {
  readonly url: string;
  /** The upstream behind it (none for the direct connection). */
  readonly upstream: Server | null;
  readonly baseline: boolean;
  /** Headers on every request (default BASIC); e.g. `Connection: close` for a handshake per request. */
  readonly headers?: Readonly<Record<string, string>>;
}

export interface Run {
  readonly id: string;
  readonly round: number;
  readonly rps: number;
  readonly p50: number;
  readonly p99: number;
  readonly requests: number;
  readonly errors: number;
  /** Proxy CPU µs per request: total, user, system. */
  readonly us: number;
  readonly usUser: number;
  readonly usSys: number;
  readonly upstreamUs: number;
  /** Share of the whole box (all CPUs) used by processes outside the measurement. */
  readonly foreignPct: number;
  readonly quietPct: number;
  readonly attempts: number;
}

export async function measureOnce(t: Target, round: number, attempts: number): Promise<Run> {
  const quietPct = await quiet();
  await runWrk(t.url, S.warmup, t.headers); // warm-up: JIT, pools, the auth cache
  const proxyPids = processTree(t.child.pid);
  const upPids = t.upstream ? processTree(t.upstream.child.pid) : [];
  const p0 = treeCpu(t.child.pid, proxyPids);
  const u0 = t.upstream ? treeCpu(t.upstream.child.pid, upPids).total : 0;
  const s0 = systemCpu();
  const m0 = selfAndReapedCpuSeconds(); // the driver, plus wrk once reaped
  const started = performance.now();
  const w = await runWrk(t.url, S.seconds, t.headers);
  const wall = (performance.now() - started) / 1000;
  const p1 = treeCpu(t.child.pid, proxyPids);
  const u1 = t.upstream ? treeCpu(t.upstream.child.pid, upPids).total : 0;
  const s1 = systemCpu();
  const mine = selfAndReapedCpuSeconds() - m0;
  const proxy = p1.total - p0.total;
  const up = u1 - u0;
  const foreign = ((s1.busy - s0.busy - proxy - up - mine) / (wall * cpus().length)) * 100;
  if (w.errors > 0 && w.requests > 0 && w.errors >= w.requests / 100) {
    throw new Error(
      `${t.label}: ${w.errors} of ${w.requests} requests failed; last access record: ${lastAccessRecord(t)}\n${w.raw}`,
    );
  }
  const per = (s: number) => (s * 1e6) / w.requests;
  return {
    id: t.id,
    round,
    rps: w.rps,
    p50: w.p50,
    p99: w.p99,
    requests: w.requests,
    errors: w.errors,
    us: per(proxy),
    usUser: per(p1.user - p0.user),
    usSys: per(p1.sys - p0.sys),
    upstreamUs: t.upstream ? per(up) : NaN,
    foreignPct: foreign,
    quietPct,
    attempts,
  };
}

/** One measurement; once more if other processes took a noticeable share of the box meanwhile. */
export async function measure(t: Target, round: number): Promise<Run> {
  const first = await measureOnce(t, round, 1);
  if (first.foreignPct <= S.retryForeignPct) return first;
  const second = await measureOnce(t, round, 2);
  return second.foreignPct < first.foreignPct ? second : { ...first, attempts: 2 };
}

/** A request through the target that must answer 200 with the 1 KiB body. */
export async function sanity(t: Target): Promise<void> {
  const r = await httpsRequest(t.port, 'GET', GET_PATH, t.headers ? { headers: { ...t.headers } } : {});
  if (r.status !== 200 || r.body.length !== 1024) {
    throw new Error(
      `${t.label}: GET ${GET_PATH} answered ${r.status} with ${r.body.length} bytes (want 200, 1024): ${r.body.toString('utf8', 0, 200)} ${lastAccessRecord(t)}`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Formatting

export const x = (v: number, d = 2) => (Number.isFinite(v) ? `${v.toFixed(d)}×` : '–');
export const int = (v: number) => (Number.isFinite(v) ? Math.round(v).toLocaleString('en-US') : '–');
export const range = (vals: number[]) => `${int(median(vals))} (${int(Math.min(...vals))}–${int(Math.max(...vals))})`;

/** "pass (1.52×; 24 % margin)" / "miss by 31 % (2.62× vs ≤ 2×)": how far from the limit, relative to it. */
export function verdict(value: number, limit: number, direction: 'max' | 'min', unit = ''): string {
  if (!Number.isFinite(value)) return 'not measured';
  const ok = direction === 'max' ? value <= limit : value >= limit;
  const by = (Math.abs(value - limit) / limit) * 100;
  const v = `${fmt(value, 2)}${unit}`;
  return ok
    ? `**pass** (${v}; ${by.toFixed(0)} % margin)`
    : `**miss** by ${by.toFixed(0)} % (${v} vs ${direction === 'max' ? '≤' : '≥'} ${limit}${unit})`;
}

export function header(extra: string[]): string {
  const dist = existsSync(join(ROOT, 'dist', 'gateway.js'))
    ? statSync(join(ROOT, 'dist', 'gateway.js')).mtime.toISOString()
    : 'missing';
  const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
  const dirty = execFileSync('git', ['status', '--porcelain', 'src'], { cwd: ROOT, encoding: 'utf8' }).trim()
    ? ' + uncommitted src changes'
    : '';
  return [
    `Machine: ${machine()}; ${versionOf('uname', ['-sr'])}; nginx ${nginxVersion()} (Debian nginx-light); HAProxy ${haproxyVersion()}; ${versionOf(which('wrk')!, ['-v']).replace(/ Copyright.*$/, '')}; ${versionOf('openssl', ['version']).replace(/ \(Library.*$/, '')}.`,
    `Gateway: \`node bin/exgate.js serve\` from dist/ (built ${dist}), git ${head}${dirty}. Certificate: self-signed EC P-256 (all servers). All traffic on 127.0.0.x.`,
    ...extra,
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------
// Rounds and the comparison table

/** Every target measured once per round, the order rotated each round so that none always goes first. */
export async function interleave(targets: readonly Target[], tag: string): Promise<Run[]> {
  const runs: Run[] = [];
  for (let r = 0; r < S.rounds; r++) {
    for (let i = 0; i < targets.length; i++) {
      const t = targets[(i + r) % targets.length]!;
      const run = await measure(t, r + 1);
      runs.push(run);
      process.stderr.write(
        `[bench] ${tag} round ${r + 1}/${S.rounds} ${t.id}: ${int(run.rps)} req/s, ${fmt(run.us)} µs/req\n`,
      );
    }
  }
  return runs;
}

/** Median over rounds of `id`'s figure ÷ `base`'s figure in the same round (CPU per request by default). */
export function ratio(runs: readonly Run[], id: string, base: string, f: (r: Run) => number = (r) => r.us): number {
  if (id === base) return runs.some((r) => r.id === base) ? 1 : NaN;
  return median(
    runs
      .filter((r) => r.id === id)
      .map((r) => {
        const b = runs.find((u) => u.id === base && u.round === r.round);
        return b ? f(r) / f(b) : NaN;
      })
      .filter(Number.isFinite),
  );
}

/** The anchors every row is divided by, side by side. */
export const ANCHORS = ['nginx', 'bare'] as const;

/** One row per target: its figures and its CPU per request ÷ nginx and ÷ the bare forwarder. */
export function comparison(targets: readonly Target[], runs: readonly Run[], extra: string[][] = []): string {
  const rows = targets.map((t) => {
    const rs = runs.filter((r) => r.id === t.id);
    const med = (f: (r: Run) => number) => median(rs.map(f));
    return [
      t.baseline ? `${t.label} *(baseline)*` : `**${t.label}**`,
      range(rs.map((r) => r.rps)),
      `${fmt(
        med((r) => r.p50),
        2,
      )} / ${fmt(
        med((r) => r.p99),
        2,
      )}`,
      `${fmt(med((r) => r.us))} (${fmt(med((r) => r.usUser))} + ${fmt(med((r) => r.usSys))})`,
      ...ANCHORS.map((a) => `**${x(ratio(runs, t.id, a))}**`),
      x(ratio(runs, t.id, 'nginx', (r) => r.rps)),
      fmt(med((r) => r.upstreamUs)),
      rs.reduce((a, r) => a + r.errors, 0),
      `${fmt(med((r) => r.foreignPct))} (max ${fmt(Math.max(...rs.map((r) => r.foreignPct)))})`,
    ];
  });
  const head = [
    'config',
    'req/s median (min–max)',
    'p50 / p99 ms',
    'proxy CPU µs/req (user + sys)',
    'CPU ÷ nginx',
    'CPU ÷ bare forwarder',
    'req/s ÷ nginx',
    'upstream µs/req',
    'errors',
    'foreign CPU %',
  ];
  return table(head, [...rows, ...extra.map((e) => [...e, ...Array(head.length - e.length).fill('')])]);
}

/** Each round's figures, one column per target. */
export function perRound(targets: readonly Target[], runs: readonly Run[]): string {
  return table(
    ['round', ...targets.map((t) => t.id)],
    Array.from({ length: S.rounds }, (_, r) => [
      r + 1,
      ...targets.map((t) => {
        const run = runs.find((u) => u.id === t.id && u.round === r + 1);
        if (!run) return '–';
        const retry = run.attempts > 1 ? ` (attempt ${run.attempts}, foreign ${fmt(run.foreignPct)} %)` : '';
        return `${int(run.rps)} req/s, ${fmt(run.us)} µs/req${retry}`;
      }),
    ]),
  );
}
