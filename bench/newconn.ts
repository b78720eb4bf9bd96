/**
 * `newconn`: a full TLS handshake per request (ECDSA P-256 certificate, as phones and Outlook
 * reconnect), every config ÷ nginx and ÷ the bare forwarder; then TLS resumption with a client
 * that offers a session ticket and counts `isSessionReused()`: on the same worker (one process)
 * and across workers (`workers: 2`, where the primary hands connections round-robin).
 */
import { join } from 'node:path';
import { CLK_TCK, processTree, readStat } from './procstat.js';
import { fmt, median, table } from './stats.js';
import { AUTH, Child, GET_PATH, HERE, NAME, S, suite, TARGETS } from './lab.js';
import {
  BASIC,
  comparison,
  header,
  interleave,
  perRound,
  quiet,
  ratio,
  sanity,
  type Target,
  verdict,
  x,
} from './measure.js';
import { profileGateway } from './profile.js';
import {
  type Server,
  startBare,
  startGatewayProcess,
  startHaproxy,
  startNginx,
  startUpstream,
  workersSupported,
} from './servers.js';

const CLOSE = { ...BASIC, Connection: 'close' };
const url = (port: number) => `https://127.0.0.1:${port}${GET_PATH}`;

export async function newConnectionBench(): Promise<string> {
  return suite(async (lab) => {
    const upstream = await startUpstream(S.upstream, lab);
    const direct = await startUpstream(S.upstream, lab, true);
    const nginx = await startNginx(lab, 'nginx', upstream.port);
    const haproxy = await startHaproxy(lab, 'haproxy', upstream.port);
    const bare = await startBare(lab, upstream.port);
    const pooled = await startBare(lab, upstream.port, true);
    const gateway = await startGatewayProcess(lab, 'gateway', 'gateway, single process', upstream.port);
    const targets: Target[] = [
      { ...direct, id: 'direct', label: 'direct: Node TLS server alone (no proxy)' },
      nginx,
      haproxy,
      bare,
      pooled,
      gateway,
    ].map((s) => ({
      ...s,
      url: url(s.port),
      headers: CLOSE,
      upstream: s.id === 'direct' ? null : upstream,
      baseline: s.id !== 'gateway',
    }));
    for (const t of targets) await sanity(t);
    const runs = await interleave(targets, 'newconn');
    const gwNginx = ratio(runs, 'gateway', 'nginx');
    const profile =
      S.profile === 'always' || (S.profile === 'auto' && !(gwNginx <= TARGETS.newConnNginx))
        ? await profileGateway(lab, upstream, 'gw-newconn-profiled', 'gateway, a new connection per request', {}, CLOSE)
        : '';

    const workers = workersSupported(lab);
    const servers: Server[] = [nginx, gateway];
    if (workers.ok) {
      servers.push(
        await startGatewayProcess(lab, 'gateway-w2', 'gateway, workers: 2', upstream.port, { extra: { workers: 2 } }),
      );
    }
    const resumption = await resumptionRows(servers);
    return [
      header([
        `Load: wrk as in \`proxy\` plus \`Connection: close\`: every request opens a TCP connection and makes a full TLS handshake (wrk offers no session). ${S.rounds} interleaved rounds of ${S.seconds} s after a ${S.warmup} s warm-up. Key exchange X25519, TLS 1.3, ECDSA P-256 signature.`,
        'The gateway and the bare forwarder open one upstream connection per client connection (undici Client per socket: NTLM binds a session to the TCP connection), so each request here also costs a TCP connect upstream; nginx and HAProxy reuse a pool, and so does the "shared undici Pool" row, which prices that pinning.',
      ]),
      '',
      '### GET 1 KiB, a new TLS connection per request',
      '',
      comparison(targets, runs),
      '',
      'Per round:',
      '',
      perRound(targets, runs),
      '',
      '### TLS resumption',
      '',
      `Client: bench/load.ts \`resume\`, ${S.resumeConns} connections one after another, each one GET with \`Connection: close\`; "full" offers no session, "resumed" offers the session of one earlier full handshake on every connection. Median of ${S.rounds} rounds. CPU: the server's process tree ÷ connections; with workers, the share each worker used says where the primary sent the connections (round-robin), and the ticket key names seen say whether the workers seal tickets with one key. TLS 1.3 resumption still runs an X25519 exchange (psk_dhe_ke): it saves the certificate and the ECDSA signature, not the key exchange.`,
      '',
      resumption.table,
      ...(workers.ok ? [] : ['', `gateway with workers not run: ${workers.why}`]),
      '',
      '### Targets (issue 16)',
      '',
      table(
        ['target', 'measured', 'limit', 'result'],
        [
          [
            'new TLS connection per request: gateway CPU/req ÷ nginx',
            x(gwNginx),
            `≤ ${TARGETS.newConnNginx}×`,
            verdict(gwNginx, TARGETS.newConnNginx, 'max'),
          ],
          ...resumption.targets,
        ],
      ),
      ...(profile ? ['', profile] : []),
    ].join('\n');
  });
}

interface Resumed {
  readonly us: number;
  readonly reused: number;
  readonly ok: number;
  readonly keys: number;
  /** Per worker process (the tree minus its root when it has children): share of the CPU. */
  readonly split: number[];
}

/** One client run against `s`; the server tree's CPU per connection and per worker. */
async function resumeOnce(s: Server, ticket: 'none' | 'fixed'): Promise<Resumed> {
  await quiet();
  const pids = processTree(s.child.pid);
  const workers = pids.length > 1 ? pids.slice(1) : pids; // nginx's or the gateway's workers
  const cpu = (pid: number) => {
    const st = readStat(pid);
    return st ? st.utime + st.stime : 0;
  };
  const before = pids.map(cpu);
  const args = ['resume', '--port', String(s.port), '--n', String(S.resumeConns), '--ticket', ticket];
  const client = new Child('resume', process.execPath, [
    join(HERE, 'load.js'),
    ...args,
    '--auth',
    AUTH,
    '--servername',
    NAME,
    '--path',
    GET_PATH,
  ]);
  const out = await client.waitFor((o) => ('done' in o ? o : undefined), 300_000, 'the resume run');
  const used = pids.map((p, i) => cpu(p) - before[i]!);
  const total = used.reduce((a, b) => a + b, 0);
  const conns = S.resumeConns + (ticket === 'fixed' ? 1 : 0);
  const workerUse = workers.map((p) => used[pids.indexOf(p)]!);
  const workerSum = workerUse.reduce((a, b) => a + b, 0) || 1;
  return {
    us: ((total / CLK_TCK) * 1e6) / conns,
    reused: Number(out.reused),
    ok: Number(out.ok),
    keys: (out.keys as string[]).length,
    split: workerUse.map((u) => u / workerSum),
  };
}

async function resumptionRows(servers: readonly Server[]): Promise<{ table: string; targets: string[][] }> {
  const results = new Map<string, { full: Resumed[]; fixed: Resumed[] }>();
  for (let r = 0; r < S.rounds; r++) {
    for (const s of servers) {
      const e = results.get(s.id) ?? { full: [], fixed: [] };
      for (const mode of (r % 2 ? ['fixed', 'none'] : ['none', 'fixed']) as ('none' | 'fixed')[]) {
        const res = await resumeOnce(s, mode);
        (mode === 'none' ? e.full : e.fixed).push(res);
        process.stderr.write(
          `[bench] resume ${s.id} ${mode}: ${fmt(res.us)} µs/conn, reused ${res.reused}/${S.resumeConns}\n`,
        );
      }
      results.set(s.id, e);
    }
  }
  const rows: (string | number)[][] = [];
  const targets: string[][] = [];
  for (const s of servers) {
    const e = results.get(s.id)!;
    const full = median(e.full.map((r) => r.us));
    const res = median(e.fixed.map((r) => r.us));
    const reusedPct = median(e.fixed.map((r) => (r.reused / S.resumeConns) * 100));
    const split = (rs: Resumed[]) =>
      rs[0]!.split.length > 1 ? rs[0]!.split.map((v) => `${fmt(v * 100, 0)} %`).join(' / ') : '1 process';
    const bad = [...e.full, ...e.fixed].reduce((a, r) => a + (S.resumeConns - r.ok), 0);
    rows.push([
      s.label,
      fmt(full),
      fmt(res),
      x(res / full),
      `${fmt(reusedPct, 0)} %`,
      `${median(e.full.map((r) => r.reused))}`,
      median(e.fixed.map((r) => r.keys)),
      split(e.fixed),
      bad,
    ]);
    if (s.id.startsWith('gateway')) {
      const where = s.id === 'gateway' ? 'same worker (one process)' : 'workers: 2, ticket from one worker';
      targets.push([
        `resumed ÷ full handshake, gateway, ${where}`,
        `${x(res / full)}; ${fmt(reusedPct, 0)} % resumed`,
        `< ${TARGETS.resumedShare}×`,
        verdict(res / full, TARGETS.resumedShare, 'max'),
      ]);
    }
  }
  const head = [
    'server',
    'full handshake CPU µs/conn',
    'offering a ticket: CPU µs/conn',
    'offering ÷ full',
    'connections resumed (isSessionReused)',
    'resumed without a ticket (must be 0)',
    'ticket key names seen',
    'CPU share per worker (ticket run)',
    'non-200',
  ];
  return { table: table(head, rows), targets };
}
