/**
 * A real gateway for integration tests: TLS on 127.0.0.1:0, the Exchange stand-in behind it
 * (HTTPS with its own test CA), a directory (the Samba AD DC of global-setup, or a `file`
 * directory made from the same fixtures), and every log line captured in memory.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildConnector, Client } from 'undici';
import { expect, inject } from 'vitest';
import { stringify } from 'yaml';
import type { AccessRecord } from '../../src/pipeline/access-log.js';
import { startGateway, type RunningGateway } from '../../src/runtime/start.js';
import {
  startExchangeStandin,
  type ExchangeStandin,
  type SeenRequest,
  type StandinOptions,
} from '../../src/standin/exchange.js';
import { DOMAIN, GROUPS, SERVICE_ACCOUNT, USERS, type TestUser } from './ad-fixtures.js';
import { scryptSync, randomBytes } from 'node:crypto';
import { createServer as createNetServer } from 'node:net';

export const EXTERNAL = 'mail.lab.test';
export const AUTODISCOVER = 'autodiscover.lab.test';
export const INTERNAL = 'exchange.lab.test';

/** The policy most tests run under: INTERFACE.md's example plus a deny group. */
export const TEST_POLICY = `
mode: enforce
rules:
  - id: blocked
    services: [mapi, ews, oab, autodiscover, activesync, owa]
    deny: { groups: [ExternalDenied] }
  - id: outlook
    services: [mapi, ews, oab, autodiscover, owa]
    allow: { groups: [AllowExternalAccess] }
  - id: mobile
    services: [activesync]
    allow: { groups: [AllowExternalAccess, MobileUsers] }
  - id: no-legacy-no-admin
    services: [rpc, ecp, powershell, mrsproxy, api]
    deny: all
`;

export type DirectoryKind = 'ldap' | 'ldaps' | 'starttls' | 'file';

export interface HarnessOptions {
  readonly directory?: DirectoryKind;
  /** Policy YAML text. Default: TEST_POLICY. */
  readonly policy?: string;
  /** Keep OWA and ECP on their default, the forms sign-in (otherwise the harness sets them to Basic). */
  readonly forms?: boolean;
  /** Top-level gateway config keys to set or replace (e.g. `{ services: {...} }`). */
  readonly gateway?: Record<string, unknown>;
  /** Replaces keys of the `directory:` section. */
  readonly directoryOverrides?: Record<string, unknown>;
  readonly standin?: StandinOptions;
}

export interface Harness {
  readonly origin: string;
  readonly port: number;
  readonly dir: string;
  readonly configFile: string;
  readonly gatewayCa: string;
  readonly standin: ExchangeStandin;
  readonly running: RunningGateway;
  /** Parsed access records, in the order written. */
  readonly access: AccessRecord[];
  /** Every byte any log wrote (access and operational), for leak checks. */
  allLogText(): string;
  /** Waits for the access record of a request (records are written when the response closes). */
  record(pred: (r: AccessRecord) => boolean, timeoutMs?: number): Promise<AccessRecord>;
  /** The number of records so far; pass it to `next` to wait for the first record after it. */
  mark(): number;
  /** Waits for the first record written after `mark`. */
  next(mark: number, timeoutMs?: number): Promise<AccessRecord>;
  close(): Promise<void>;
}

class Capture {
  readonly lines: string[] = [];
  write(s: string): void {
    this.lines.push(s);
  }
}

/** Starts stand-in and gateway. */
export async function startHarness(opts: HarnessOptions = {}): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), 'exgate-it-'));
  const upstreamCert = makeCert(dir, 'upstream', ['exchange-be.lab.test']);
  const standin = await startExchangeStandin({ tls: upstreamCert, ...opts.standin });
  const config = {
    listen: { host: '127.0.0.1', port: 0 },
    tls: { cert: 'gateway.crt', key: 'gateway.key', selfSigned: true },
    names: { external: [EXTERNAL, AUTODISCOVER], internal: [INTERNAL], noSni: 'external' },
    upstream: { url: standin.url, ca: 'upstream-ca.pem', servername: 'exchange-be.lab.test' },
    directory: { ...directorySection(opts.directory ?? 'ldap', dir), ...opts.directoryOverrides },
    policyFile: 'policy.yaml',
    log: { level: 'debug', access: 'stdout' },
    // Many tests send many wrong names from 127.0.0.1; only the lockout tests want the spray limit.
    lockout: { sourceAccounts: 1000, sourceFailures: 100000 },
    ...opts.gateway,
    // OWA takes Basic in the tests of the rich-client doors (it still may); the browser door's tests
    // (`forms: true`) keep the default, forms.
    services: opts.forms
      ? (opts.gateway?.services ?? {})
      : { owa: { auth: 'basic' }, ecp: { auth: 'basic' }, ...(opts.gateway?.services as object | undefined) },
  };
  writeFileSync(join(dir, 'upstream-ca.pem'), upstreamCert.cert);
  writeFileSync(join(dir, 'policy.yaml'), opts.policy ?? TEST_POLICY);
  const configFile = join(dir, 'gateway.yaml');
  writeFileSync(configFile, stringify(config));
  const accessCapture = new Capture();
  const appCapture = new Capture();
  let running: RunningGateway;
  try {
    running = await startGateway(configFile, { accessStream: accessCapture, appStream: appCapture });
  } catch (err) {
    await standin.close();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const access: AccessRecord[] = [];
  const parsedUpTo = { n: 0 };
  const parse = () => {
    for (; parsedUpTo.n < accessCapture.lines.length; parsedUpTo.n++) {
      access.push(JSON.parse(accessCapture.lines[parsedUpTo.n] as string) as AccessRecord);
    }
  };
  const h: Harness = {
    origin: `https://127.0.0.1:${running.address.port}`,
    port: running.address.port,
    dir,
    configFile,
    standin,
    running,
    access,
    gatewayCa: readFileSync(join(dir, 'gateway.crt'), 'utf8'),
    allLogText: () => accessCapture.lines.join('') + appCapture.lines.join(''),
    record: async (pred, timeoutMs = 3000) => {
      const end = Date.now() + timeoutMs;
      for (;;) {
        parse();
        const found = access.find(pred);
        if (found) return found;
        if (Date.now() > end)
          throw new Error(`no access record matched; have:\n${access.map((r) => JSON.stringify(r)).join('\n')}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    mark: () => {
      parse();
      return access.length;
    },
    next: async (mark, timeoutMs = 3000) => {
      const end = Date.now() + timeoutMs;
      for (;;) {
        parse();
        const found = access[mark];
        if (found) return found;
        if (Date.now() > end) throw new Error(`no access record after #${mark}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    close: async () => {
      await running.close();
      await standin.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  Object.defineProperty(h, 'access', {
    get: () => {
      parse();
      return access;
    },
  });
  return h;
}

function directorySection(kind: DirectoryKind, dir: string): Record<string, unknown> {
  const common = { netbiosDomain: DOMAIN.netbios, upnSuffixes: [DOMAIN.dnsName] };
  if (kind === 'file') {
    writeFileSync(join(dir, 'users.yaml'), fileDirectoryYaml());
    return { type: 'file', path: 'users.yaml', baseDn: DOMAIN.baseDn, ...common };
  }
  writeFileSync(join(dir, 'bind-password'), SERVICE_ACCOUNT.password + '\n', { mode: 0o600 });
  const url = kind === 'ldaps' ? inject('ldapsUrl') : inject('ldapUrl');
  return {
    type: 'ldap',
    url,
    startTls: kind === 'starttls',
    ...(kind === 'ldap' ? {} : { ca: inject('ldapCaFile') }),
    bindDn: SERVICE_ACCOUNT.dn,
    bindPasswordFile: 'bind-password',
    baseDn: DOMAIN.baseDn,
    ...common,
    connectTimeoutMs: 1000,
    timeoutMs: 3000,
  };
}

let fileYaml: string | undefined;

/** The AD fixtures as a `file` directory (scrypt N=1024 to keep tests fast). */
export function fileDirectoryYaml(): string {
  if (fileYaml) return fileYaml;
  const users: Record<string, unknown> = {};
  for (const u of Object.values(USERS) as TestUser[]) {
    users[u.sam] = {
      password: quickHash(u.password),
      name: u.cn,
      mail: u.mail,
      ...(u.state === 'disabled' ? { disabled: true } : {}),
      ...(u.state === 'mustChangePassword' ? { mustChangePassword: true } : {}),
      ...(u.state === 'expired' ? { expires: '2020-01-01T00:00:00Z' } : {}),
    };
  }
  const groups: Record<string, { members: string[] }> = {};
  for (const g of Object.values(GROUPS)) groups[g.name] = { members: [] };
  for (const u of Object.values(USERS) as TestUser[]) for (const g of u.groups) groups[g]?.members.push(u.sam);
  for (const g of Object.values(GROUPS)) for (const parent of g.memberOf) groups[parent]?.members.push(g.name);
  fileYaml = stringify({ users, groups });
  return fileYaml;
}

function quickHash(password: string): string {
  const salt = randomBytes(16);
  const hash = scryptSync(password, salt, 32, { N: 1024, r: 8, p: 1 });
  return `scrypt$1024$8$1$${salt.toString('base64')}$${hash.toString('base64')}`;
}

/** A self-signed EC certificate for `names` (the first is the CN), written into `dir`. */
export function makeCert(dir: string, base: string, names: string[]): { cert: string; key: string } {
  const key = join(dir, `${base}.key`);
  const cert = join(dir, `${base}.crt`);
  const san = names.map((n) => (/^[\d.]+$/.test(n) ? `IP:${n}` : `DNS:${n}`)).join(',');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-days',
      '2',
      '-subj',
      `/CN=${names[0]}`,
      '-addext',
      `subjectAltName=${san}`,
      '-keyout',
      key,
      '-out',
      cert,
    ],
    { stdio: 'ignore' },
  );
  return { cert: readFileSync(cert, 'utf8'), key: readFileSync(key, 'utf8') };
}

export interface SendOptions {
  readonly method?: string;
  readonly user?: string;
  readonly password?: string;
  /** A raw Authorization header (wins over user/password). */
  readonly authorization?: string;
  readonly headers?: Record<string, string>;
  readonly body?: string | Buffer | NodeJS.ReadableStream | null;
  /** SNI to send; null for none. Default: the external name. */
  readonly servername?: string | null;
  /** Host header. Default: the SNI, else the external name. */
  readonly host?: string;
  readonly headersTimeout?: number;
  /** The client's source address (any 127.x.y.z works on Linux loopback). */
  readonly localAddress?: string;
}

export interface Reply {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: Buffer;
  text(): string;
}

/** One request on a fresh TLS connection to the gateway. */
export async function send(h: Harness, path: string, opts: SendOptions = {}): Promise<Reply> {
  const client = clientFor(h, opts.servername === undefined ? EXTERNAL : opts.servername, opts.localAddress);
  try {
    return await sendOn(
      client,
      path,
      opts.servername === null ? (opts.host ?? EXTERNAL) : (opts.host ?? opts.servername ?? EXTERNAL),
      opts,
    );
  } finally {
    await client.close().catch(() => {});
  }
}

/** A client connection to the gateway (keep-alive; close it yourself). */
export function clientFor(h: Harness, servername: string | null = EXTERNAL, localAddress?: string): Client {
  // The gateway's certificate is trusted, but not checked against the name: tests send names
  // (internal, unknown) it does not carry, to see the gateway refuse them. The SNI is forced:
  // undici would otherwise send the Host header's name.
  const connector = buildConnector({ ca: h.gatewayCa, checkServerIdentity: () => undefined });
  return new Client(h.origin, {
    connect: (opts, cb) =>
      connector({ ...opts, servername: servername ?? undefined, localAddress: localAddress ?? null }, cb),
    headersTimeout: 0,
    bodyTimeout: 0,
  });
}

/** One request on an existing client connection. */
export async function sendOn(client: Client, path: string, host: string, opts: SendOptions = {}): Promise<Reply> {
  const headers: Record<string, string> = { host, ...opts.headers };
  if (opts.authorization !== undefined) headers.authorization = opts.authorization;
  else if (opts.user !== undefined) headers.authorization = basic(opts.user, opts.password ?? '');
  const res = await client.request({
    path,
    method: (opts.method ?? 'GET') as 'GET',
    headers,
    body: opts.body as string | Buffer | null | undefined,
    headersTimeout: opts.headersTimeout ?? 30_000,
  });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers, body, text: () => body.toString('utf8') };
}

/** `Basic base64(user:password)` in UTF-8. */
export function basic(user: string, password: string): string {
  return 'Basic ' + Buffer.from(`${user}:${password}`, 'utf8').toString('base64');
}

/** A loopback port nobody listens on right now (for a gateway started as a process). */
export async function freePort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** A count of what reached the stand-in since a point in time (see {@link watchForwarded}). */
export interface ForwardWatch {
  /** Requests (matching the predicate, if any) the stand-in recorded since the watch began. */
  count(): number;
  /** Asserts, after a short settle, that the stand-in recorded none since the watch began. */
  expectNone(what?: string): Promise<void>;
}

/**
 * Denied means never forwarded. Starts counting what the stand-in of `h` records: everything, or
 * only the requests matching `pred` when other requests legitimately reach it meanwhile (mark the
 * denied request with a unique path or query, or match its user; for NTLM, whose Type 1 legs are
 * forwarded by design, match `r.ntlm === 'type3'` and the refused user).
 */
export function watchForwarded(
  h: { readonly standin: ExchangeStandin },
  pred?: (r: SeenRequest) => boolean,
): ForwardWatch {
  const before = h.standin.seen(pred);
  const count = () => h.standin.seen(pred) - before;
  return {
    count,
    expectNone: async (what = 'a denied request reached the stand-in') => {
      // A wrongly forwarded request is recorded once its body is read: give it a moment to land.
      await new Promise((r) => setTimeout(r, 20));
      const n = count();
      const seen = n > 0 ? h.standin.requests.filter((r) => !pred || pred(r)).slice(-n) : [];
      expect(n, `${what}: ${seen.map((r) => `${r.method} ${r.url} as ${r.user ?? '-'}`).join(', ')}`).toBe(0);
    },
  };
}

/**
 * Runs `act` (the denied request or requests) and asserts the stand-in recorded nothing meanwhile
 * (nothing matching `pred`, when given); returns what `act` returned.
 */
export async function expectNotForwarded<T>(
  h: { readonly standin: ExchangeStandin },
  act: () => Promise<T>,
  pred?: (r: SeenRequest) => boolean,
): Promise<T> {
  const watch = watchForwarded(h, pred);
  const result = await act();
  await watch.expectNone();
  return result;
}
