/** A CPU profile of the gateway under the keep-alive load, summarized by category and function. */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { processTree } from './procstat.js';
import { fmt, table } from './stats.js';
import { GET_PATH, type Lab, ROOT, S, sleep } from './lab.js';
import { int, measureOnce, sanity, type Target } from './measure.js';
import { startGatewayProcess, type UpstreamServer } from './servers.js';

// ---------------------------------------------------------------------------------------------
// CPU profile of the gateway under the same load

interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number } }[];
  samples: number[];
  timeDeltas: number[];
}

export async function profileGateway(
  lab: Lab,
  upstream: UpstreamServer,
  id: string,
  label: string,
  extra: Record<string, unknown>,
  headers?: Readonly<Record<string, string>>,
): Promise<string> {
  const dir = join(lab.dir, `${id}-cpu-prof`);
  mkdirSync(dir, { recursive: true });
  // Cluster workers inherit the primary's execArgv, so each of them writes its own profile too.
  const gw = await startGatewayProcess(lab, id, `${label} under --cpu-prof`, upstream.port, {
    extra,
    nodeArgs: ['--cpu-prof', '--cpu-prof-dir', dir],
  });
  const url = `https://127.0.0.1:${gw.port}${GET_PATH}`;
  const t: Target = { ...gw, url, upstream, baseline: false, ...(headers ? { headers } : {}) };
  await sanity(t);
  const processes = processTree(gw.child.pid).length;
  const run = await measureOnce(t, 0, 1);
  await gw.child.stop(20_000); // a clean exit writes the profiles
  await sleep(500);
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .map((f) => join(dir, f));
  const title = `### Where the time goes: ${label} (\`node --cpu-prof\`, ${S.warmup} s warm-up + ${S.seconds} s of the same wrk load: ${int(run.rps)} req/s, ${fmt(run.us)} µs/req with the profiler on)`;
  if (files.length === 0)
    return `${title}\n\nNo profile was written (the gateway ${gw.child.stderr ? `said: ${gw.child.stderr.slice(0, 300)}` : 'did not exit cleanly'}).`;
  const keep = mkdtempSync(join(tmpdir(), `exgate-${id}-`));
  for (const f of files) writeFileSync(join(keep, f.slice(dir.length + 1)), readFileSync(f));
  return [
    title,
    '',
    summarizeProfile(
      files.map((f) => JSON.parse(readFileSync(f, 'utf8')) as CpuProfile),
      processes,
    ),
    '',
    `Profiles kept in ${keep} (open in Chrome DevTools → Performance, or speedscope).`,
  ].join('\n');
}

/** Self time by category and by function, summed over the profiles of every process (primary and workers). */
function summarizeProfile(profiles: CpuProfile[], processes: number): string {
  const selfUs = new Map<string, { frame: CpuProfile['nodes'][number]['callFrame']; us: number }>();
  const perProcess: number[] = [];
  for (const p of profiles) {
    const nodes = new Map(p.nodes.map((n) => [n.id, n]));
    let busyHere = 0;
    for (let i = 0; i < p.samples.length; i++) {
      const n = nodes.get(p.samples[i]!);
      if (!n) continue;
      const us = p.timeDeltas[i + 1] ?? p.timeDeltas[i] ?? 0;
      const key = `${n.callFrame.functionName}\u0000${n.callFrame.url}\u0000${n.callFrame.lineNumber}`;
      const e = selfUs.get(key) ?? { frame: n.callFrame, us: 0 };
      e.us += us;
      selfUs.set(key, e);
      if (n.callFrame.functionName !== '(idle)') busyHere += us;
    }
    perProcess.push(busyHere);
  }
  const short = (url: string) =>
    url
      .replace(pathToFileURL(ROOT).href + '/', '')
      .replace(/^.*\/node_modules\//, '')
      .replace(/^file:\/\//, '');
  const category = (name: string, url: string) => {
    if (name === '(idle)') return 'idle (waiting in epoll)';
    if (name === '(garbage collector)') return 'garbage collector';
    if (name === '(program)') return 'V8/native, not attributed (TLS, parser, syscalls)';
    if (url === '') return 'native functions (bindings: writev, TLS, …)';
    if (url.startsWith('node:')) return 'Node core (JS)';
    if (url.includes('/node_modules/undici/')) return 'undici';
    if (
      /\/node_modules\/(pino|sonic-boom|fast-redact|pino-std-serializers|quick-format-unescaped|thread-stream|on-exit-leak-free)\//.test(
        url,
      )
    )
      return 'pino (access log)';
    if (url.includes('/node_modules/')) return 'other dependencies';
    if (url.includes('/dist/')) return 'exgate (dist/)';
    return 'other';
  };
  const byFn = new Map<string, number>();
  const byCat = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (const { frame, us } of selfUs.values()) {
    const { functionName, url, lineNumber } = frame;
    const name = functionName || '(anonymous)';
    total += us;
    if (name === '(idle)') idle += us;
    const cat = category(name, url);
    byCat.set(cat, (byCat.get(cat) ?? 0) + us);
    if (name !== '(idle)') {
      const key = `\`${name}\` ${url ? `${short(url)}:${lineNumber + 1}` : '(native)'}`;
      byFn.set(key, (byFn.get(key) ?? 0) + us);
    }
  }
  const busy = total - idle;
  const pct = (us: number) => `${fmt((us / busy) * 100)} %`;
  const cats = [...byCat].filter(([c]) => !c.startsWith('idle')).sort((a, b) => b[1] - a[1]);
  const fns = [...byFn].sort((a, b) => b[1] - a[1]).slice(0, 25);
  return [
    `${profiles.length} profile(s) for ${processes} process(es); busy seconds per profile: ${perProcess.map((u) => fmt(u / 1e6, 2)).join(', ')}. Sampled ${fmt(total / 1e6)} s in all, ${fmt(busy / 1e6)} s busy (main threads only: a profile does not see libuv/V8 helper threads). Shares below are of the busy time.`,
    '',
    table(
      ['category (self time)', 'ms', 'share'],
      cats.map(([c, us]) => [c, fmt(us / 1000, 0), pct(us)]),
    ),
    '',
    table(
      ['top self-time functions', 'ms', 'share'],
      fns.map(([f, us]) => [f.replace(/\|/g, '\\|'), fmt(us / 1000, 0), pct(us)]),
    ),
  ].join('\n');
}
