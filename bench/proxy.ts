/**
 * `proxy`: GET 1 KiB with keep-alive and warm Basic auth, access log on (issue 16, method:
 * research/perf.md): every config's CPU per request ÷ nginx and ÷ the bare forwarder, in one run.
 * Knobs (environment), for every suite: BENCH_ROUNDS (3), BENCH_SECONDS (10), BENCH_WARMUP (2),
 * BENCH_WRK_CONNECTIONS (64), BENCH_UPSTREAM (plain | standin), BENCH_PROFILE (auto | always | never).
 */
import { cpus } from 'node:os';
import { fmt, table } from './stats.js';
import { GET_PATH, type Lab, NAME, PASSWORD, S, suite, TARGETS, USER } from './lab.js';
import {
  comparison,
  header,
  interleave,
  perRound,
  ratio,
  sanity,
  type Target,
  verdict,
  wrkArgs,
  x,
} from './measure.js';
import { profileGateway } from './profile.js';
import {
  httpsRequest,
  nginxErrors,
  startBare,
  startGatewayProcess,
  startHaproxy,
  startNginx,
  startUpstream,
  type UpstreamServer,
  WORKERS_EXTRA,
  workersSupported,
} from './servers.js';

const url = (port: number) => `https://127.0.0.1:${port}${GET_PATH}`;

/** A row that could not be measured, and why. */
interface NotRun {
  readonly label: string;
  readonly why: string;
}

/**
 * ===== OWA with a live forms session (issue 16) =====
 * The row to compare with the cached Basic row. TODO(forms): once the gateway has forms sessions,
 * start it here with a policy that lets OWA use forms, log in once (the forms POST → the session
 * cookie), and return the gateway as a Target with `headers: { Cookie: … }` and no Authorization;
 * the table, the ratios and the rounds take it from there. Until then it says why it was not run.
 */
async function owaFormsTarget(lab: Lab, upstream: UpstreamServer): Promise<Target | NotRun> {
  const label = 'gateway, OWA request with a live forms session';
  const extra = { services: { ews: { maxBodyBytes: 0 }, owa: { auth: 'forms' } } };
  const gw = await startGatewayProcess(lab, 'gateway-forms', label, upstream.port, { extra });
  const form = `destination=${encodeURIComponent(`https://${NAME}/owa/`)}&flags=4&username=${USER}&password=${encodeURIComponent(PASSWORD)}`;
  const signIn = await httpsRequest(gw.port, 'POST', '/owa/auth.owa', {
    body: Buffer.from(form),
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
  });
  const cookies = ([] as string[]).concat(signIn.headers['set-cookie'] ?? []).map((c) => c.split(';')[0]);
  if (signIn.status !== 302 || !cookies.some((c) => c?.startsWith('exgate-session='))) {
    gw.child.killTree();
    return { label, why: `not run: the sign-in answered ${signIn.status} without a session cookie` };
  }
  return { ...gw, url: url(gw.port), upstream, baseline: false, headers: { Cookie: cookies.join('; ') } };
}

export async function proxyBench(): Promise<string> {
  return suite(async (lab) => {
    const upstream = await startUpstream(S.upstream, lab);
    const direct = await startUpstream(S.upstream, lab, true);
    const nginx = await startNginx(lab, 'nginx', upstream.port);
    const haproxy = await startHaproxy(lab, 'haproxy', upstream.port);
    const bare = await startBare(lab, upstream.port);
    const gateway = await startGatewayProcess(
      lab,
      'gateway',
      'gateway, single process, Basic auth cached',
      upstream.port,
    );
    const targets: Target[] = [
      { ...direct, id: 'direct', label: 'direct: TLS straight to the upstream (no proxy)', url: url(direct.port) },
      { ...nginx, url: url(nginx.port) },
      { ...haproxy, url: url(haproxy.port) },
      { ...bare, url: url(bare.port) },
      { ...gateway, url: url(gateway.port) },
    ].map((t) => ({ ...t, upstream: t.id === 'direct' ? null : upstream, baseline: t.id !== 'gateway' }));
    const notRun: NotRun[] = [];
    const workers = workersSupported(lab);
    if (workers.ok) {
      const label = `gateway, ${JSON.stringify(WORKERS_EXTRA)}`;
      const gw = await startGatewayProcess(lab, 'gateway-workers', label, upstream.port, { extra: WORKERS_EXTRA });
      targets.push({ ...gw, url: url(gw.port), upstream, baseline: false });
    } else {
      notRun.push({ label: `gateway, ${JSON.stringify(WORKERS_EXTRA)}`, why: `not run: ${workers.why}` });
    }
    const forms = await owaFormsTarget(lab, upstream);
    if ('why' in forms) notRun.push(forms);
    else targets.push(forms);
    for (const t of targets) await sanity(t);

    const runs = await interleave(targets, 'proxy');
    const errs = nginxErrors(nginx);
    const gwBare = ratio(runs, 'gateway', 'bare');
    const gwNginx = ratio(runs, 'gateway', 'nginx');
    const bareNginx = ratio(runs, 'bare', 'nginx');
    const targetRows = [
      ['gateway CPU/req ÷ bare forwarder', x(gwBare), `≤ ${TARGETS.cpuBare}×`, verdict(gwBare, TARGETS.cpuBare, 'max')],
      ['gateway CPU/req ÷ nginx', x(gwNginx), `≤ ${TARGETS.cpuNginx}×`, verdict(gwNginx, TARGETS.cpuNginx, 'max')],
      ['(context) bare forwarder CPU/req ÷ nginx: the floor of a Node proxy', x(bareNginx), '–', '–'],
      ['(context) HAProxy CPU/req ÷ nginx', x(ratio(runs, 'haproxy', 'nginx')), '–', '–'],
    ];
    if (!('why' in forms)) {
      // Issue 13: a request with a live forms session costs no more than a cached Basic request.
      const f = ratio(runs, 'gateway-forms', 'gateway');
      targetRows.push([
        'OWA forms session CPU/req ÷ cached Basic (gateway)',
        x(f),
        '≤ 1.00× (noise ±5 %)',
        verdict(f, 1.05, 'max'),
      ]);
    }
    if (workers.ok) {
      const wk = ratio(runs, 'gateway-workers', 'nginx', (r) => r.rps);
      const cores = cpus().length <= 2 ? ' (2 vCPUs shared with wrk and the upstream)' : '';
      targetRows.push(['(context) gateway with workers, req/s ÷ nginx', x(wk), '–', `–${cores}`]);
    }
    const missed = !(gwBare <= TARGETS.cpuBare) || !(gwNginx <= TARGETS.cpuNginx);
    const profiles: string[] = [];
    if (S.profile === 'always' || (S.profile === 'auto' && missed)) {
      profiles.push(await profileGateway(lab, upstream, 'gateway-profiled', 'gateway, single process', {}));
    }
    const load = wrkArgs(`https://127.0.0.1:PORT${GET_PATH}`, S.seconds)
      .map((a) => (a.includes(' ') ? `'${a}'` : a))
      .join(' ');
    return [
      header([
        `Load: \`${load}\` after a ${S.warmup} s warm-up run, ${S.rounds} interleaved rounds (order rotated each round). Upstream: ${upstream.label} on 127.0.0.1, the same for every config; GET answers 1 KiB with Exchange-like headers.`,
        `CPU: utime+stime of each server's process tree (/proc/<pid>/stat) over the measured run ÷ requests; "foreign" = busy time of the whole box not used by the server, the upstream, wrk or the driver (a run above ${S.retryForeignPct} % is measured again once). Ratios: median of per-round ratios.`,
        'Gateway: file directory (1 user, scrypt N=1024), policy allows owa/ews/activesync, auth cache 3600 s, access log to a file. nginx: bench/nginx.conf.template (access_log buffer=64k); HAProxy: bench/haproxy.cfg.template (option httplog to a file); bare forwarder: bench/bare-forwarder.ts (no auth, log or metrics).',
      ]),
      '',
      '### GET 1 KiB, keep-alive, warm Basic auth, access log on',
      '',
      comparison(
        targets,
        runs,
        notRun.map((n) => [n.label, n.why.replace(/\|/g, '/')]),
      ),
      '',
      'Per round:',
      '',
      perRound(targets, runs),
      '',
      '### Targets (issue 16)',
      '',
      table(['target', 'measured', 'limit', 'result'], targetRows),
      ...(errs.length ? ['', `nginx error log: ${errs.join(' / ')}`] : []),
      ...profiles.flatMap((p) => ['', p]),
      '',
      `(${fmt(S.seconds, 0)} s per run; numbers on a shared 2-vCPU box move ±10–20 % between runs: compare ratios.)`,
    ].join('\n');
  });
}
