/**
 * The servers the proxy benchmarks compare, each its own process on 127.0.0.1: the upstream,
 * the gateway (`node bin/exgate.js serve`), nginx and HAProxy (Debian packages, from the
 * templates beside this file) and the bare forwarder (bare-forwarder.ts).
 */
import { spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { stringify } from 'yaml';
import { hardNofile, processTree } from './procstat.js';
import {
  Child,
  EXGATE,
  freePort,
  HERE,
  type Lab,
  listening,
  NAME,
  AUTH,
  ROOT,
  TEMPLATE,
  versionOf,
  which,
} from './lab.js';

// ---------------------------------------------------------------------------------------------
// The servers

export interface Server {
  readonly id: string;
  readonly label: string;
  readonly child: Child;
  readonly port: number;
  /** Where it keeps its access log (for the first failure's reason). */
  readonly accessLog?: string;
}

export interface UpstreamServer extends Server {
  /** ActiveSync Pings received so far. */
  pings(): number;
}

export async function startUpstream(kind: 'plain' | 'standin', lab: Lab, tls = false): Promise<UpstreamServer> {
  const args = [join(HERE, 'upstream.js'), '--kind', kind, ...(tls ? ['--cert', lab.cert, '--key', lab.key] : [])];
  const child = new Child(`upstream-${kind}${tls ? '-tls' : ''}`, process.execPath, args);
  const port = await child.waitFor(
    (o) => (typeof o.port === 'number' ? o.port : undefined),
    15_000,
    'the upstream port',
  );
  let pings = 0;
  child.onLine((line) => {
    const m = /^\{"pings":(\d+)\}$/.exec(line);
    if (m) pings = Number(m[1]);
  });
  const what =
    kind === 'plain' ? 'minimal node:http upstream (bench/upstream.ts)' : 'Exchange stand-in (src/standin/exchange.ts)';
  return { id: 'upstream', label: `${what}${tls ? ' over TLS' : ''}`, child, port, pings: () => pings };
}

/**
 * The gateway as deployed: `node bin/exgate.js serve --config FILE`, its own process.
 * `extra` adds config keys (the workers configuration), `nodeArgs` e.g. --cpu-prof.
 */
export async function startGatewayProcess(
  lab: Lab,
  id: string,
  label: string,
  upstreamPort: number,
  opts: { extra?: Record<string, unknown>; nodeArgs?: string[]; env?: NodeJS.ProcessEnv } = {},
): Promise<Server> {
  const port = await freePort();
  // Apart from the config, as in production: the gateway watches its config's folder (watch.ts).
  mkdirSync(join(lab.dir, 'logs'), { recursive: true });
  const accessLog = join(lab.dir, 'logs', `${id}-access.log`);
  const config = join(lab.dir, `${id}.yaml`);
  writeFileSync(config, stringify(gatewayConfig(lab, port, upstreamPort, accessLog, opts.extra)));
  const child = new Child(
    id,
    process.execPath,
    [...(opts.nodeArgs ?? []), EXGATE, 'serve', '--config', config],
    opts.env,
  );
  await listening(child, port);
  return { id, label, child, port, accessLog };
}

export function gatewayConfig(
  lab: Lab,
  port: number,
  upstreamPort: number,
  accessLog: string,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    listen: { host: '127.0.0.1', port },
    tls: { cert: lab.cert, key: lab.key },
    names: { external: [NAME, '127.0.0.1'] },
    upstream: { url: `http://127.0.0.1:${upstreamPort}` },
    directory: { type: 'file', path: lab.users, netbiosDomain: 'BENCH', upnSuffixes: [NAME] },
    policyFile: lab.policy,
    log: { level: 'warn', access: accessLog }, // access records to a file, as in production
    http: { keepAliveTimeoutMs: 300_000, shutdownGraceMs: 1000 }, // nginx: keepalive_timeout 300s
    cache: { authTtlSeconds: 3600, groupTtlSeconds: 3600 }, // stays warm for the whole run
    lockout: { threshold: 1_000_000, sourceAccounts: 1_000_000, sourceFailures: 1_000_000 },
    // OWA with Basic (forms is its default since the forms sign-in landed): the load sends Basic auth.
    services: { ews: { maxBodyBytes: 0 }, owa: { auth: 'basic' } }, // ews: the 1 GiB upload
    ...extra,
  };
}

/**
 * ===== The "gateway, workers" configuration =====
 * The config keys that run the gateway on all cores (issue 5: `workers: auto`, node:cluster).
 * It is measured only when `exgate check` accepts them, so the row appears by itself once the
 * feature lands; until then the report says it was not run and why.
 */
export const WORKERS_EXTRA: Record<string, unknown> = { workers: 'auto' };

/** Whether the built gateway (dist/) accepts WORKERS_EXTRA; the reason when it does not. */
export function workersSupported(lab: Lab): { ok: true } | { ok: false; why: string } {
  const file = join(lab.dir, 'workers-check.yaml');
  writeFileSync(file, stringify(gatewayConfig(lab, 1, 1, join(lab.dir, 'workers-check.log'), WORKERS_EXTRA)));
  const r = spawnSync(process.execPath, [EXGATE, 'check', '--offline', '--config', file], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (r.status === 0) return { ok: true };
  const text = `${r.stdout}${r.stderr}`.trim();
  const line = text.split('\n').find((l) => /workers/i.test(l)) ?? text.split('\n')[0] ?? `exit ${r.status}`;
  return { ok: false, why: line.trim() };
}

export async function startNginx(lab: Lab, id: string, upstreamPort: number, workers = 'auto'): Promise<Server> {
  const dir = join(lab.dir, id);
  const port = await freePort();
  const nofile = hardNofile();
  const isRoot = process.getuid?.() === 0;
  mkdirSync(join(dir, 'logs'), { recursive: true });
  for (const t of ['client_body_temp', 'proxy_temp', 'fastcgi_temp', 'uwsgi_temp', 'scgi_temp']) {
    mkdirSync(join(dir, t), { recursive: true });
    if (isRoot) chownSync(join(dir, t), 65534, 65534); // Debian's nobody:nogroup, nginx's default worker user
  }
  const conf = readFileSync(TEMPLATE, 'utf8')
    .replaceAll('{{USER}}', isRoot ? 'user nobody nogroup;' : '')
    .replaceAll('{{DIR}}', dir)
    .replaceAll('{{PORT}}', String(port))
    .replaceAll('{{UPSTREAM_PORT}}', String(upstreamPort))
    .replaceAll('{{CERT}}', lab.cert)
    .replaceAll('{{KEY}}', lab.key)
    .replaceAll('{{WORKERS}}', workers)
    .replaceAll('{{NOFILE}}', String(nofile))
    .replaceAll('{{CONNECTIONS}}', String(nofile - 64));
  writeFileSync(join(dir, 'nginx.conf'), conf);
  const child = new Child(id, which('nginx')!, [
    '-p',
    `${dir}/`,
    '-c',
    join(dir, 'nginx.conf'),
    '-e',
    join(dir, 'logs', 'error.log'),
    '-g',
    'daemon off;',
  ]);
  await listening(child, port);
  const w = processTree(child.pid).length - 1;
  return {
    id,
    label: `nginx ${nginxVersion()} (${w} worker${w === 1 ? '' : 's'})`,
    child,
    port,
    accessLog: join(dir, 'logs', 'access.log'),
  };
}

/** HAProxy from haproxy.cfg.template, one thread per CPU, its access log (stdout) to a file. */
export async function startHaproxy(lab: Lab, id: string, upstreamPort: number): Promise<Server> {
  const dir = join(lab.dir, id);
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const pem = join(dir, 'cert-and-key.pem'); // HAProxy reads both from one file
  writeFileSync(pem, readFileSync(lab.cert, 'utf8') + readFileSync(lab.key, 'utf8'));
  const conf = readFileSync(join(ROOT, 'bench', 'haproxy.cfg.template'), 'utf8')
    .replaceAll('{{DIR}}', dir)
    .replaceAll('{{PORT}}', String(port))
    .replaceAll('{{UPSTREAM_PORT}}', String(upstreamPort))
    .replaceAll('{{PEM}}', pem)
    .replaceAll('{{THREADS}}', String(cpus().length))
    .replaceAll('{{MAXCONN}}', String(Math.floor((hardNofile() - 256) / 2)));
  writeFileSync(join(dir, 'haproxy.cfg'), conf);
  const accessLog = join(dir, 'access.log');
  const child = new Child(id, which('haproxy')!, ['-f', join(dir, 'haproxy.cfg'), '-db'], {}, accessLog);
  await listening(child, port);
  return { id, label: `HAProxy ${haproxyVersion()} (${cpus().length} threads)`, child, port, accessLog };
}

export function haproxyVersion(): string {
  return /version ([\d.]+)/.exec(versionOf(which('haproxy')!, ['-v']))?.[1] ?? '';
}

/** The bare forwarder (bare-forwarder.ts): a Node TLS server and undici, nothing else. */
export async function startBare(lab: Lab, upstreamPort: number, pooled = false): Promise<Server> {
  const args = [
    '--cert',
    lab.cert,
    '--key',
    lab.key,
    '--upstream',
    String(upstreamPort),
    ...(pooled ? ['--pool'] : []),
  ];
  const id = pooled ? 'bare-pooled' : 'bare';
  const child = new Child(id, process.execPath, [join(HERE, 'bare-forwarder.js'), ...args]);
  const port = await child.waitFor((o) => (typeof o.port === 'number' ? o.port : undefined), 15_000, 'its port');
  return {
    id,
    label: pooled
      ? 'bare forwarder with one shared undici Pool (not the gateway design)'
      : 'bare forwarder: Node TLS + undici Client per connection, no auth/log/metrics',
    child,
    port,
  };
}

export function nginxVersion(): string {
  return /nginx\/([\d.]+)/.exec(versionOf(which('nginx')!, ['-v']))?.[1] ?? '';
}

export function nginxErrors(server: Server, pattern = /\[(alert|crit|emerg|error)\]/): string[] {
  const file = join(dirname(server.accessLog ?? ''), 'error.log');
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => pattern.test(l))
    .slice(0, 3);
}

/** One HTTPS request through a server, as a real client would send it (SNI and Host = NAME). */
export function httpsRequest(
  port: number,
  method: string,
  path: string,
  opts: { body?: Buffer; headers?: Record<string, string> } = {},
): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolveReq, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        method,
        path,
        servername: NAME,
        rejectUnauthorized: false,
        agent: false,
        headers: {
          host: NAME,
          authorization: AUTH,
          ...(opts.body ? { 'content-length': String(opts.body.length) } : {}),
          ...opts.headers,
        },
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('end', () => resolveReq({ status: res.statusCode ?? 0, body: Buffer.concat(parts) }));
      },
    );
    req.setTimeout(15_000, () => req.destroy(new Error(`no answer from 127.0.0.1:${port}${path}`)));
    req.on('error', reject);
    req.end(opts.body);
  });
}

export function lastAccessRecord(server: Server): string {
  if (!server.accessLog || !existsSync(server.accessLog)) return '';
  const lines = readFileSync(server.accessLog, 'utf8').trim().split('\n');
  return (lines[lines.length - 1] ?? '').slice(0, 400);
}
