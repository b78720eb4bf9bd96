/**
 * The gateway configuration schema, with every default beside its key (INTERFACE.md, "Gateway
 * configuration"). Unknown keys are errors. Durations carry their unit in the key name.
 * load.ts validates a file against this, reports every problem at once, and freezes the result.
 */
import { z } from 'zod';
import { SERVICES, type Service } from '../pipeline/services.js';
import { parseCidr } from '../runtime/cidr.js';
import { stateSection } from './state-schema.js';

const port = z.number().int().min(0).max(65535);
const nonEmpty = z.string().min(1, 'must not be empty');
const names = z.array(nonEmpty);
const seconds = z.number().int().min(0);
const positive = z.number().int().min(1);

const cidr = z.string().refine((s) => parseCidr(s) !== null, 'expected an address or a CIDR such as 10.0.0.0/24');

const listen = z.strictObject({
  /** Address to listen on. Default: all IPv4 addresses. */
  host: nonEmpty.default('0.0.0.0'),
  /** Default: 443. */
  port: port.default(443),
  /**
   * Behind a layer-4 balancer: a PROXY protocol header (v1 or v2) is required from these addresses
   * and refused from all others. Default: absent (no PROXY protocol).
   */
  proxyProtocol: z.strictObject({ from: z.array(cidr).min(1, 'needs at least one address or CIDR') }).optional(),
});

const tls = z.strictObject({
  /** PEM certificate chain: the leaf first. */
  cert: nonEmpty,
  /** PEM private key. */
  key: nonEmpty,
  /** Lab only: generate a sha256 self-signed cert+key at these paths when they are missing. Default: false. */
  selfSigned: z.boolean().default(false),
  /** Oldest TLS version accepted. Default: TLSv1.2. */
  minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
  /** A client that has not finished the handshake by then is dropped. Default: 10000. */
  handshakeTimeoutMs: positive.default(10_000),
  /**
   * A new session-ticket key this often (made by the primary, shared by the workers); a ticket made
   * with the previous key gets a full handshake. Default: 43200 (12 h).
   */
  ticketKeyRotationSeconds: positive.default(43_200),
});

const namesSection = z.strictObject({
  /** The internet-facing names this gateway serves. */
  external: names.min(1, 'needs at least one name'),
  /** The internal namespace: refused here with 421. Default: none. */
  internal: names.default([]),
  /** A client that sent no SNI: treated as `external` (default) or refused (`reject`). */
  noSni: z.enum(['external', 'reject']).default('external'),
});

const upstreamUrl = z.url({ protocol: /^https?$/, error: 'expected an http:// or https:// URL' });

/** Active health checks of every server and service (`GET /<vdir>/healthcheck.htm`). */
const healthCheck = z.strictObject({
  /** Time between two probes of one server and service (fractions allowed). Default: 10. */
  intervalSeconds: z.number().min(0.05).max(3600).default(10),
  /** A probe without an answer within this fails. Default: 3000. */
  timeoutMs: positive.default(3000),
  /** Consecutive failed probes before a server is out for a service. Default: 2. */
  failures: positive.default(2),
  /** Consecutive good probes before it is back. Default: 2. */
  successes: positive.default(2),
});

const upstream = z
  .strictObject({
    /** One Exchange server, e.g. https://exchange.lab.test:443. Either this or `servers`. */
    url: upstreamUrl.optional(),
    /** Every Exchange server behind the gateway (a DAG): a pool with health checks. Either this or `url`. */
    servers: z.array(upstreamUrl).min(1, 'needs at least one server').optional(),
    /** PEM file of the CA(s) that issued Exchange's certificate. Default: Node's built-in CA list. */
    ca: nonEmpty.optional(),
    /** SNI sent to Exchange and the name verified on its certificate. Default: each URL's host. */
    servername: nonEmpty.optional(),
    /** Lab only: do not verify Exchange's certificate. Default: false. */
    insecureSkipVerify: z.boolean().default(false),
    /** Lab only: allow an http:// Exchange that is not on loopback (Basic passwords in clear). Default: false. */
    allowPlaintext: z.boolean().default(false),
    /** Default: 10000. */
    connectTimeoutMs: positive.default(10_000),
    /** Default with `servers`: the defaults above; with `url`: none (one server, nowhere else to go). */
    healthCheck: healthCheck.optional(),
  })
  .superRefine((u, ctx) => {
    if (u.url === undefined && u.servers === undefined)
      ctx.addIssue({ code: 'custom', path: ['url'], message: 'required: `url` (one server) or `servers` (a list)' });
    if (u.url !== undefined && u.servers !== undefined)
      ctx.addIssue({ code: 'custom', path: ['servers'], message: '`url` and `servers` are alternatives: keep one' });
  });

const directoryCommon = {
  /** `DOMAIN\user` is accepted for this NetBIOS name only; a bare `user` means `DOMAIN\user`. */
  netbiosDomain: nonEmpty,
  /** `user@suffix` is accepted for these suffixes only. Default: none. */
  upnSuffixes: names.default([]),
};

const ldapUrl = z
  .string()
  .regex(
    /^ldaps?:\/\/[^/?#\s@]+\/?$/,
    'expected ldap://host[:port] or ldaps://host[:port] (no user or password in it)',
  );

const ldapDirectory = z.strictObject({
  type: z.literal('ldap'),
  /** One URL, or a list tried in order. */
  url: z.union([ldapUrl, z.array(ldapUrl).min(1)], { error: 'expected an LDAP URL or a list of LDAP URLs' }),
  /** PEM file of the CA that issued the DCs' certificates. Default: Node's built-in CA list. */
  ca: nonEmpty.optional(),
  /** Upgrade ldap:// connections with StartTLS. Default: false. */
  startTls: z.boolean().default(false),
  /** Lab only: allow ldap:// without StartTLS to a DC that is not on loopback (passwords in clear). Default: false. */
  allowPlaintext: z.boolean().default(false),
  /** The service account that looks users and groups up. */
  bindDn: nonEmpty,
  /** Name of the environment variable holding the service account's password. */
  /** The NAME of the variable (its value is never printed, nor is this key's if it is not a name). */
  bindPasswordEnv: z
    .string()
    .regex(
      /^[A-Za-z_][A-Za-z0-9_]*$/,
      'expected the name of an environment variable (letters, digits, _), not its value',
    )
    .optional(),
  /** Or a file holding it (one line; the trailing newline is ignored). */
  bindPasswordFile: nonEmpty.optional(),
  /** Where users and groups are searched. */
  baseDn: nonEmpty,
  ...directoryCommon,
  /** TCP (and TLS) connect limit per DC. Default: 3000. */
  connectTimeoutMs: positive.default(3000),
  /** Limit for each LDAP operation. Default: 5000. */
  timeoutMs: positive.default(5000),
  /** Password checks (binds) running at once against the DCs; more wait in a queue. Default: 16. */
  maxConcurrentBinds: positive.default(16),
  /** Password checks waiting for a slot; past this a request gets 503. Default: 256. */
  maxQueuedBinds: z.number().int().min(0).default(256),
  /** A DC that failed is skipped for this long before it is tried again. Default: 10. */
  dcRetrySeconds: positive.default(10),
});

const fileDirectory = z.strictObject({
  type: z.literal('file'),
  /** The YAML file of users, password hashes and groups. */
  path: nonEmpty,
  /** Base of the DNs the file directory makes up. Default: from the first UPN suffix. */
  baseDn: nonEmpty.optional(),
  ...directoryCommon,
});

const directory = z.discriminatedUnion('type', [ldapDirectory, fileDirectory], {
  error: 'must be ldap or file',
});

const log = z.strictObject({
  /** Operational log level (stderr). Default: info. */
  level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Where access records go: `stdout` (default) or a file path. */
  access: nonEmpty.default('stdout'),
});

const cache = z.strictObject({
  /** Entries per cache. Default: 10000. */
  max: positive.default(10_000),
  /** A verified password is trusted this long. Default: 300. */
  authTtlSeconds: seconds.default(300),
  /** A group change takes effect within this. Default: 60. */
  groupTtlSeconds: seconds.default(60),
  /** A wrong password is remembered this long. Default: 30. */
  negativeTtlSeconds: seconds.default(30),
  /** While the directory is unreachable, users verified within this long past their TTLs keep
   * working (logged `cache: stale`). 0 = fail closed at once. Default: 0. */
  staleIfErrorSeconds: seconds.default(0),
});

const lockout = z.strictObject({
  /** Distinct wrong passwords per user and source class (familiar, unfamiliar) in the window
   * before that class is refused. Keep 2 × threshold below the AD lockout threshold. Default: 5. */
  threshold: positive.default(5),
  /** A count resets after this long without a failure; at least AD's "reset account lockout
   * counter after". Default: 1800. */
  windowSeconds: positive.default(1800),
  /** Distinct accounts failing from one address in the window before it gets 429. Default: 10. */
  sourceAccounts: positive.default(10),
  /** Distinct failed (account, password) pairs from one address in the window before it gets 429. Default: 50. */
  sourceFailures: positive.default(50),
  /** An address a user signed in from stays familiar this long. Default: 1209600 (14 days). */
  familiarSeconds: positive.default(14 * 86_400),
  /** Accounts and addresses the lockout tracks at most (its own bound, apart from the caches). Default: 100000. */
  max: positive.default(100_000),
  /** Sign-ins of one account that may wait at once for its checks in flight to settle. Default: 32. */
  maxWaiting: positive.default(32),
  /** How long such a sign-in waits before it gets 503 (try again). Default: 10000. */
  waitMs: positive.default(10_000),
});

/** A service's settings; `auth` takes the modes its clients speak. */
function serviceSettingsWith<A extends readonly [string, ...string[]]>(modes: A) {
  return z.strictObject({
    /** Rich clients: basic (default) | ntlm | basic+ntlm. OWA and ECP: forms (default) | basic. */
    auth: z.enum(modes).optional(),
    /** Largest request body forwarded; 0 = no limit. Defaults in services.ts. */
    maxBodyBytes: z.number().int().min(0).optional(),
    /** Longest silence on a request before it is cut. Defaults in services.ts. */
    idleTimeoutSeconds: positive.optional(),
    /** rpc only: Outlook Anywhere tunnels one address may hold open at once. Default: 16. */
    maxTunnelsPerSource: positive.optional(),
  });
}
const serviceSettings = serviceSettingsWith(['basic', 'ntlm', 'basic+ntlm', 'forms'] as const);
const richClient = serviceSettingsWith(['basic', 'ntlm', 'basic+ntlm'] as const);
const browser = serviceSettingsWith(['forms', 'basic'] as const);

const services = z.strictObject(
  Object.fromEntries(
    SERVICES.map((s) => [s, (s === 'owa' || s === 'ecp' ? browser : richClient).optional()]),
  ) as Record<Service, z.ZodOptional<typeof serviceSettings>>,
);

const session = z.strictObject({
  /** A browser session unused this long ends. Default: 480 (OWA's private-computer timeout). */
  idleMinutes: z.number().positive().default(480),
  /** A browser session ends this long after its sign-in. Default: 24. */
  maxHours: z.number().positive().default(24),
  /** Browser sessions held at most; the oldest go first. Default: 100000. */
  max: positive.default(100_000),
});

const admin = z.strictObject({
  /** Default: 127.0.0.1 (never the public interface unless you say so). */
  host: nonEmpty.default('127.0.0.1'),
  /** Default: 9090. */
  port: port.default(9090),
});

const CAS_FLAGS = [
  'MAPIBlockOutlookRpcHttp',
  'MAPIBlockOutlookExternalConnectivity',
  'ActiveSyncEnabled',
  'EwsEnabled',
  'OWAEnabled',
] as const;

const flagRule = z.strictObject({
  /** The service whose external access the flag follows. */
  service: z.enum(SERVICES),
  /** The flag's value for a user allowed that service from outside (the other value otherwise). */
  allowedValue: z.boolean(),
});

const mailboxFlags = z.strictObject({
  /** Command that reads a PowerShell script on stdin, e.g. [pwsh, -NoProfile, -File, session.ps1]. */
  runner: z.array(nonEmpty).min(1),
  /** Which Set-CASMailbox flags follow which service. Default: both MAPIBlock flags follow mapi
   * (allowed → $false, not allowed → $true). ActiveSyncEnabled/EwsEnabled/OWAEnabled are optional. */
  flags: z.partialRecord(z.enum(CAS_FLAGS), flagRule).default({
    MAPIBlockOutlookRpcHttp: { service: 'mapi', allowedValue: false },
    MAPIBlockOutlookExternalConnectivity: { service: 'mapi', allowedValue: false },
  }),
  /** Mailboxes per runner call when applying. Default: 50. */
  batchSize: positive.default(50),
  /** Longest a runner call may take. Default: 600. */
  runnerTimeoutSeconds: positive.default(600),
  /** Refuse a plan that blocks more than this share of mailboxes, unless --force. Default: 0.1. */
  maxBlockShare: z.number().min(0).max(1).default(0.1),
  /** 0 = on demand only; otherwise `serve` also syncs on this interval. Default: 0. */
  intervalMinutes: z.number().min(0).default(0),
});

const http = z.strictObject({
  /** On SIGTERM, how long requests in flight may take to finish before they are cut. Default: 10000. */
  shutdownGraceMs: z.number().int().min(0).default(10_000),
  /** On SIGTERM, how long long-polls (ActiveSync Ping, NotificationWait, …) may go on before they
   * are cut; their clients reconnect at once. At most shutdownGraceMs. Default: 5000. */
  longPollGraceMs: z.number().int().min(0).default(5000),
  /** Slow-header (slowloris) limit for a request's headers. Default: 30000. */
  headersTimeoutMs: positive.default(30_000),
  /** How long an idle client connection is kept open between requests. Default: 100000. */
  keepAliveTimeoutMs: positive.default(100_000),
});

/** The whole gateway file. */
export const gatewaySchema = z.strictObject({
  listen: listen.prefault({}),
  /** Processes serving requests: 1 (default), a number, or `auto` (one per CPU core). */
  workers: z
    .union([z.literal('auto'), z.number().int().min(1).max(256)], { error: 'expected auto or a number of workers' })
    .default(1),
  tls,
  names: namesSection,
  upstream,
  directory,
  /** The policy file (INTERFACE.md, "Policy file"). */
  policyFile: nonEmpty,
  log: log.prefault({}),
  http: http.prefault({}),
  cache: cache.prefault({}),
  lockout: lockout.prefault({}),
  services: services.default({}),
  /** Browser sessions of the forms sign-in (OWA, ECP). */
  session: session.prefault({}),
  /** What several gateways share (Redis); without it, each gateway alone. */
  state: stateSection.prefault({}),
  admin: admin.optional(),
  mailboxFlags: mailboxFlags.optional(),
});

export type GatewayFile = z.infer<typeof gatewaySchema>;
export type LdapDirectoryConfig = z.infer<typeof ldapDirectory>;
export type FileDirectoryConfig = z.infer<typeof fileDirectory>;
export type ServiceSettings = z.infer<typeof serviceSettings>;
export type { Service };
