/**
 * Memory suites, gateway against nginx: RSS per idle long-poll connection (`memory-idle`) and
 * RSS growth during a 1 GiB upload (`memory-upload`). See proxy.ts for the knobs.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { hardNofile, processTree, treeCpu, treeRssKb } from './procstat.js';
import { fmt, median, table } from './stats.js';
import { AUTH, Child, GET_PATH, HERE, type Lab, NAME, S, SOURCES, sleep, suite, TARGETS } from './lab.js';
import { header, verdict, x } from './measure.js';
import {
  httpsRequest,
  lastAccessRecord,
  nginxErrors,
  type Server,
  startGatewayProcess,
  startNginx,
  startUpstream,
  type UpstreamServer,
} from './servers.js';

// ---------------------------------------------------------------------------------------------
// Suites: memory

/** A fresh server per memory measurement: nginx, or the gateway with a GC hook (SIGUSR2). */
async function freshProxy(kind: 'nginx' | 'gateway', lab: Lab, upstream: UpstreamServer, tag: string): Promise<Server> {
  if (kind === 'nginx') return startNginx(lab, `nginx-${tag}`, upstream.port);
  return startGatewayProcess(lab, `gateway-${tag}`, 'gateway, single process', upstream.port, {
    nodeArgs: ['--expose-gc', '--import', pathToFileURL(join(HERE, 'gc-hook.js')).href],
    env: { EXGATE_BENCH_MEMFILE: memFile(lab, tag) },
  });
}

const memFile = (lab: Lab, tag: string) => join(lab.dir, `memory-${tag}.json`);

/** Full GC in the gateway (no-op for nginx), then a moment for RSS to settle; the gateway's heap figures. */
async function collect(
  kind: 'nginx' | 'gateway',
  s: Server,
  lab: Lab,
  tag: string,
): Promise<{ heapUsed: number; external: number } | null> {
  if (kind === 'gateway') {
    rmSync(memFile(lab, tag), { force: true });
    s.child.kill('SIGUSR2');
  }
  await sleep(1000);
  // Without the hook SIGUSR2 would have ended the process: RSS would read 0.
  if (!s.child.alive) throw new Error(`${s.label} exited (SIGUSR2 GC hook not loaded?):\n${s.child.stderr}`);
  if (kind !== 'gateway' || !existsSync(memFile(lab, tag))) return null;
  return JSON.parse(readFileSync(memFile(lab, tag), 'utf8')) as { heapUsed: number; external: number };
}

const MB = (kb: number) => kb / 1024;

interface Idle {
  readonly kind: 'nginx' | 'gateway';
  readonly label: string;
  readonly held: number;
  readonly failed: number;
  readonly answered: number;
  readonly baseKb: number;
  readonly heldKb: number;
  readonly gcKb: number;
  readonly openMs: number;
  readonly processes: number;
  readonly notes: string[];
  /** Gateway only: JS heap (used, after GC) and `external` growth per connection. */
  readonly heapKbPerConn: number;
  readonly externalKbPerConn: number;
}

async function idleOnce(
  kind: 'nginx' | 'gateway',
  lab: Lab,
  upstream: UpstreamServer,
  n: number,
  tag: string,
): Promise<Idle> {
  const s = await freshProxy(kind, lab, upstream, tag);
  let hold: Child | undefined;
  try {
    // Warm-up: the auth cache, the JIT, one Ping answered after 10 ms.
    for (let i = 0; i < 20; i++) {
      const r = await httpsRequest(s.port, 'GET', GET_PATH);
      if (r.status !== 200) throw new Error(`${s.label}: warm-up GET answered ${r.status} ${lastAccessRecord(s)}`);
    }
    const ping = await httpsRequest(
      s.port,
      'POST',
      '/Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=WARM&DeviceType=Bench',
      {
        body: Buffer.from([0x03, 0x01, 0x6a, 0x00]),
        headers: {
          'x-standin-heartbeat-ms': '10',
          'content-type': 'application/vnd.ms-sync.wbxml',
          'ms-asprotocolversion': '16.1',
        },
      },
    );
    if (ping.status !== 200) throw new Error(`${s.label}: warm-up Ping answered ${ping.status} ${lastAccessRecord(s)}`);
    const heap0 = await collect(kind, s, lab, tag);
    const baseKb = treeRssKb(s.child.pid);
    const pings0 = upstream.pings();
    const started = performance.now();
    hold = new Child('hold', process.execPath, [
      join(HERE, 'load.js'),
      'hold',
      '--port',
      String(s.port),
      '--n',
      String(n),
      '--conc',
      '64',
      '--sources',
      SOURCES.join(','),
      '--auth',
      AUTH,
      '--servername',
      NAME,
      '--heartbeat-ms',
      '3600000',
    ]);
    const state = await hold.waitFor((o) => (o.done === true ? o : undefined), 180_000, `${n} connections`);
    // Wait until the upstream holds every Ping the client sent: each long-poll is open end to end.
    const deadline = Date.now() + 30_000;
    while (upstream.pings() - pings0 < Number(state.sent) && Date.now() < deadline) await sleep(100);
    const openMs = performance.now() - started;
    await sleep(3000);
    const pids = processTree(s.child.pid);
    const heldKb = treeRssKb(s.child.pid, pids);
    const heap1 = await collect(kind, s, lab, tag);
    const gcKb = treeRssKb(s.child.pid, pids);
    const last = JSON.parse(hold.stdout.trim().split('\n').pop() ?? '{}') as Record<string, unknown>;
    const notes: string[] = [];
    if (Number(last.failed) > 0) notes.push(`${String(last.failed)} connections failed (${String(last.firstError)})`);
    if (Number(last.answered) > 0) notes.push(`${String(last.answered)} answered early (${String(last.firstAnswer)})`);
    const held = Math.min(Number(last.sent) - Number(last.answered), upstream.pings() - pings0);
    if (held < n) notes.push(`the upstream holds ${upstream.pings() - pings0} of ${n}`);
    if (kind === 'nginx') notes.push(...nginxErrors(s));
    return {
      kind,
      label: s.label,
      held,
      failed: Number(last.failed),
      answered: Number(last.answered),
      baseKb,
      heldKb,
      gcKb,
      openMs,
      processes: pids.length,
      notes,
      heapKbPerConn: heap0 && heap1 ? (heap1.heapUsed - heap0.heapUsed) / 1024 / held : NaN,
      externalKbPerConn: heap0 && heap1 ? (heap1.external - heap0.external) / 1024 / held : NaN,
    };
  } finally {
    await hold?.stop();
    await s.child.stop();
  }
}

export async function idleMemoryBench(): Promise<string> {
  return suite(async (lab) => {
    const upstream = await startUpstream('standin', lab);
    const limit = hardNofile();
    // The single-process gateway holds two descriptors per long-poll (client and upstream).
    const n = Math.min(S.idleConns, Math.floor((limit - 256) / 2));
    const results: Idle[] = [];
    for (let r = 0; r < S.memRounds; r++) {
      for (const kind of (r % 2 === 0 ? ['nginx', 'gateway'] : ['gateway', 'nginx']) as ('nginx' | 'gateway')[]) {
        results.push(await idleOnce(kind, lab, upstream, n, `idle${r + 1}`));
        const last = results[results.length - 1]!;
        process.stderr.write(
          `[bench] idle ${kind}: ${last.held} held, ${fmt((last.gcKb - last.baseKb) / last.held)} KB/conn after GC\n`,
        );
      }
    }
    const per = (i: Idle, kb: number) => (kb - i.baseKb) / i.held;
    const kbOf = (kind: string, f: (i: Idle) => number) => median(results.filter((i) => i.kind === kind).map(f));
    const ngx = kbOf('nginx', (i) => per(i, i.gcKb));
    const rows = (['nginx', 'gateway'] as const).map((kind) => {
      const rs = results.filter((i) => i.kind === kind);
      const gc = kbOf(kind, (i) => per(i, i.gcKb));
      return [
        kind === 'nginx' ? `${rs[0]!.label} *(baseline)*` : `**${rs[0]!.label}**`,
        rs.map((i) => i.held).join(', '),
        fmt(MB(median(rs.map((i) => i.baseKb)))),
        fmt(MB(median(rs.map((i) => i.heldKb)))),
        fmt(MB(median(rs.map((i) => i.gcKb)))),
        fmt(kbOf(kind, (i) => per(i, i.heldKb))),
        fmt(gc),
        kind === 'nginx' ? '1.00×' : x(gc / ngx),
        kind === 'nginx'
          ? '–'
          : `${fmt(kbOf(kind, (i) => i.heapKbPerConn))} + ${fmt(kbOf(kind, (i) => i.externalKbPerConn))}`,
        fmt(median(rs.map((i) => i.openMs)) / 1000),
        rs
          .flatMap((i) => i.notes)
          .join('; ')
          .replace(/\|/g, '/') || '–',
      ];
    });
    const gw = kbOf('gateway', (i) => per(i, i.gcKb));
    const gwNoGc = kbOf('gateway', (i) => per(i, i.heldKb));
    return [
      header([
        `Each config: a fresh server; warm-up (20 GETs, one Ping); baseline RSS (after a full GC in the gateway: \`--expose-gc\` and a SIGUSR2 hook preloaded from bench/gc-hook.ts); then ${n.toLocaleString('en-US')} TLS connections from ${SOURCES[0]}–${SOURCES[SOURCES.length - 1]}, each with an ActiveSync Ping (POST /Microsoft-Server-ActiveSync?Cmd=Ping, \`X-Standin-Heartbeat-Ms: 3600000\`) that the Exchange stand-in holds without a byte; RSS of the server's process tree (VmRSS) 3 s after the upstream holds them all, and again after a GC. ${S.memRounds} round(s).`,
        ...(n < S.idleConns
          ? [
              `**${n.toLocaleString('en-US')} connections, not ${S.idleConns.toLocaleString('en-US')}:** the hard open-file limit here is ${limit} and cannot be raised (no CAP_SYS_RESOURCE); the single-process gateway needs 2 descriptors per long-poll (client + upstream). Both servers are measured at the same count.`,
            ]
          : []),
      ]),
      '',
      `### RSS per idle long-poll connection (${n.toLocaleString('en-US')} connections)`,
      '',
      table(
        [
          'config',
          'held',
          'baseline RSS MB',
          'RSS MB held',
          'RSS MB held, after GC',
          'KB/conn',
          'KB/conn after GC',
          '÷ nginx (after GC)',
          'of which JS heap + external KB/conn',
          'time to open all (s)',
          'notes',
        ],
        rows,
      ),
      '',
      'JS heap + external: growth of `process.memoryUsage()` heapUsed and external after GC, per connection; the rest of the RSS growth is native memory (OpenSSL TLS state and buffers, libuv/socket structures, allocator slack).',
      '',
      '### Target (issue 16)',
      '',
      table(
        ['target', 'measured', 'limit', 'result'],
        [
          [
            'gateway RSS per idle long-poll connection (after GC)',
            `${fmt(gw)} KB`,
            `≤ ${TARGETS.kbPerConn} KB`,
            verdict(gw, TARGETS.kbPerConn, 'max', ' KB'),
          ],
          [
            'the same, without forcing a GC',
            `${fmt(gwNoGc)} KB`,
            `≤ ${TARGETS.kbPerConn} KB`,
            verdict(gwNoGc, TARGETS.kbPerConn, 'max', ' KB'),
          ],
        ],
      ),
    ].join('\n');
  });
}

interface Upload {
  readonly kind: 'nginx' | 'gateway';
  readonly label: string;
  readonly baseKb: number;
  readonly peakKb: number;
  readonly ms: number;
  readonly cpu: number;
  readonly samples: number;
}

async function uploadOnce(kind: 'nginx' | 'gateway', lab: Lab, upstream: UpstreamServer, tag: string): Promise<Upload> {
  const s = await freshProxy(kind, lab, upstream, tag);
  try {
    for (let i = 0; i < 5; i++) {
      const r = await httpsRequest(s.port, 'POST', '/EWS/Exchange.asmx', {
        body: Buffer.alloc(64 * 1024, 'x'),
        headers: { 'content-type': 'text/xml; charset=utf-8' },
      });
      if (r.status !== 200) throw new Error(`${s.label}: warm-up POST answered ${r.status} ${lastAccessRecord(s)}`);
    }
    await collect(kind, s, lab, tag);
    const pids = processTree(s.child.pid);
    const baseKb = treeRssKb(s.child.pid, pids);
    let peakKb = baseKb;
    let samples = 0;
    const sampler = setInterval(() => {
      peakKb = Math.max(peakKb, treeRssKb(s.child.pid, pids));
      samples++;
    }, 100);
    const cpu0 = treeCpu(s.child.pid, pids).total;
    const client = new Child('upload', process.execPath, [
      join(HERE, 'load.js'),
      'upload',
      '--port',
      String(s.port),
      '--bytes',
      String(S.uploadBytes),
      '--auth',
      AUTH,
      '--servername',
      NAME,
      '--path',
      '/EWS/Exchange.asmx',
    ]);
    let result: Record<string, unknown>;
    try {
      result = await client.waitFor((o) => ('status' in o ? o : undefined), 600_000, 'the upload');
    } finally {
      clearInterval(sampler);
      await client.stop();
    }
    peakKb = Math.max(peakKb, treeRssKb(s.child.pid, pids));
    const cpu = treeCpu(s.child.pid, pids).total - cpu0;
    let bytes = -1;
    try {
      bytes = Number((JSON.parse(String(result.body)) as { bytes: number }).bytes);
    } catch {
      // not the stand-in's JSON: reported below
    }
    if (result.status !== 200 || bytes !== S.uploadBytes) {
      throw new Error(
        `${s.label}: the upload answered ${String(result.status)}, upstream got ${bytes} of ${S.uploadBytes} bytes: ${String(result.body ?? result.error)} ${lastAccessRecord(s)}`,
      );
    }
    if (kind === 'nginx') {
      const spooled = nginxErrors(s, /buffered to a temporary file/);
      if (spooled.length > 0)
        throw new Error(`${s.label} spooled the upload to disk (proxy_request_buffering is not off?): ${spooled[0]}`);
    }
    return { kind, label: s.label, baseKb, peakKb, ms: Number(result.ms), cpu, samples };
  } finally {
    await s.child.stop();
  }
}

export async function uploadMemoryBench(): Promise<string> {
  return suite(async (lab) => {
    const upstream = await startUpstream('standin', lab);
    const results: Upload[] = [];
    for (let r = 0; r < S.uploadRounds; r++) {
      for (const kind of (r % 2 === 0 ? ['nginx', 'gateway'] : ['gateway', 'nginx']) as ('nginx' | 'gateway')[]) {
        results.push(await uploadOnce(kind, lab, upstream, `upload${r + 1}`));
        const u = results[results.length - 1]!;
        process.stderr.write(`[bench] upload ${kind}: +${fmt(MB(u.peakKb - u.baseKb))} MB in ${fmt(u.ms / 1000)} s\n`);
      }
    }
    const gib = S.uploadBytes / 2 ** 30;
    const growth = (u: Upload) => MB(u.peakKb - u.baseKb);
    const ngx = median(results.filter((u) => u.kind === 'nginx').map(growth));
    const rows = (['nginx', 'gateway'] as const).map((kind) => {
      const rs = results.filter((u) => u.kind === kind);
      const g = rs.map(growth);
      return [
        kind === 'nginx' ? `${rs[0]!.label}, proxy_request_buffering off *(baseline)*` : `**${rs[0]!.label}**`,
        rs.length,
        fmt(MB(median(rs.map((u) => u.baseKb)))),
        fmt(MB(Math.max(...rs.map((u) => u.peakKb)))),
        g.map((v) => fmt(v)).join(', '),
        kind === 'nginx' ? '1.00×' : ngx > 1 ? x(median(g) / ngx) : `n/a (nginx grew ${fmt(ngx)} MB)`,
        fmt(median(rs.map((u) => S.uploadBytes / 2 ** 20 / (u.ms / 1000))), 0),
        fmt(median(rs.map((u) => u.cpu / gib)), 2),
        Math.min(...rs.map((u) => u.samples)),
      ];
    });
    const worst = Math.max(...results.filter((u) => u.kind === 'gateway').map(growth));
    return [
      header([
        `Each config: a fresh server; 5 warm-up POSTs of 64 KiB; baseline RSS (after a full GC in the gateway); then one POST /EWS/Exchange.asmx of ${fmt(gib, 2)} GiB with Content-Length from a separate client process (64 KiB writes with backpressure), which the Exchange stand-in reads and hashes; RSS of the server's process tree sampled from /proc every 100 ms. Gateway config: \`services: { ews: { maxBodyBytes: 0 } }\`; nginx: client_max_body_size 0, proxy_request_buffering off. ${S.uploadRounds} round(s), order alternating.`,
      ]),
      '',
      `### RSS growth during a ${fmt(gib, 2)} GiB upload`,
      '',
      table(
        [
          'config',
          'runs',
          'baseline RSS MB',
          'peak RSS MB',
          'growth MB (each run)',
          'growth ÷ nginx (medians)',
          'MB/s',
          'proxy CPU s per GiB',
          'samples',
        ],
        rows,
      ),
      '',
      '### Target (issue 16)',
      '',
      table(
        ['target', 'measured', 'limit', 'result'],
        [
          [
            `gateway RSS growth during a ${fmt(gib, 2)} GiB upload (worst run)`,
            `${fmt(worst)} MB`,
            `≤ ${TARGETS.uploadMb} MB`,
            verdict(worst, TARGETS.uploadMb, 'max', ' MB'),
          ],
        ],
      ),
    ].join('\n');
  });
}
