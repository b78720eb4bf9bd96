/**
 * The Exchange service table: which path prefix is which service, and what each service needs
 * from the gateway by default. Data only; classify.ts looks paths up here.
 *
 * Timeouts sit above each protocol's own heartbeat (research/node-proxy.md §4):
 * - ActiveSync Ping holds a request up to 3540 s (59 min) with no byte on the wire → 3660 s.
 * - MAPI NotificationWait answers within 5 min and writes PENDING every 30 s (MS-OXCMAPIHTTP 3.2.5.5) → 360 s.
 * - EWS streaming notifications last up to 30 min with periodic keep-alives → 2100 s.
 * - Outlook Anywhere keeps channels up to 900 s between server keep-alives → 960 s.
 * Body limits follow Exchange's own defaults (EWS 64 MiB, ActiveSync 10 MiB, OWA 35 MB).
 */

/** The closed service vocabulary of INTERFACE.md. */
export const SERVICES = [
  'mapi',
  'rpc',
  'ews',
  'mrsproxy',
  'activesync',
  'owa',
  'ecp',
  'oab',
  'autodiscover',
  'powershell',
  'api',
] as const;

export type Service = (typeof SERVICES)[number];

/** How the gateway authenticates a service's clients; `forms`: OWA and ECP's sign-in page and a session. */
export type AuthMode = 'basic' | 'ntlm' | 'basic+ntlm' | 'forms';

export interface ServiceDefaults {
  readonly auth: AuthMode;
  /** Largest request body forwarded; larger gets 413 `too-large`. 0 = no limit. */
  readonly maxBodyBytes: number;
  /** Longest silence on the client or the upstream side of a request before it is cut. */
  readonly idleTimeoutSeconds: number;
  /** rpc only: Outlook Anywhere tunnels one client address may hold open at once. */
  readonly maxTunnelsPerSource: number;
}

const MiB = 1024 * 1024;

/** Default settings per service; `services:` in the gateway config overrides them key by key. */
export const SERVICE_DEFAULTS: Readonly<Record<Service, ServiceDefaults>> = {
  mapi: { auth: 'basic', maxBodyBytes: 64 * MiB, idleTimeoutSeconds: 360, maxTunnelsPerSource: 16 },
  rpc: { auth: 'basic', maxBodyBytes: 0, idleTimeoutSeconds: 960, maxTunnelsPerSource: 16 },
  ews: { auth: 'basic', maxBodyBytes: 64 * MiB, idleTimeoutSeconds: 2100, maxTunnelsPerSource: 16 },
  mrsproxy: { auth: 'basic', maxBodyBytes: 64 * MiB, idleTimeoutSeconds: 300, maxTunnelsPerSource: 16 },
  activesync: { auth: 'basic', maxBodyBytes: 10 * MiB, idleTimeoutSeconds: 3660, maxTunnelsPerSource: 16 },
  owa: { auth: 'forms', maxBodyBytes: 35_000_000, idleTimeoutSeconds: 300, maxTunnelsPerSource: 16 },
  ecp: { auth: 'forms', maxBodyBytes: 35_000_000, idleTimeoutSeconds: 300, maxTunnelsPerSource: 16 },
  oab: { auth: 'basic', maxBodyBytes: 1 * MiB, idleTimeoutSeconds: 300, maxTunnelsPerSource: 16 },
  autodiscover: { auth: 'basic', maxBodyBytes: 1 * MiB, idleTimeoutSeconds: 120, maxTunnelsPerSource: 16 },
  powershell: { auth: 'basic', maxBodyBytes: 64 * MiB, idleTimeoutSeconds: 300, maxTunnelsPerSource: 16 },
  api: { auth: 'basic', maxBodyBytes: 64 * MiB, idleTimeoutSeconds: 300, maxTunnelsPerSource: 16 },
};

/**
 * Path prefixes, most specific first. A prefix ending in '/' also matches the bare folder
 * (`/ews` is `/ews/`); one without a trailing slash matches itself and anything below it.
 * Paths are compared after normalization (lowercase, single slashes).
 */
export const SERVICE_PREFIXES: readonly (readonly [prefix: string, service: Service])[] = [
  ['/ews/mrsproxy.svc', 'mrsproxy'],
  ['/mapi/', 'mapi'],
  ['/rpc/', 'rpc'],
  ['/ews/', 'ews'],
  ['/microsoft-server-activesync', 'activesync'],
  ['/owa/', 'owa'],
  ['/ecp/', 'ecp'],
  ['/oab/', 'oab'],
  ['/autodiscover/', 'autodiscover'],
  ['/powershell/', 'powershell'],
  ['/api/', 'api'],
];

/** The methods Outlook Anywhere uses; Node's HTTP parser rejects both (research/node-proxy.md §1). */
export const RPC_METHODS: ReadonlySet<string> = new Set(['RPC_IN_DATA', 'RPC_OUT_DATA']);

export function isService(name: string): name is Service {
  return (SERVICES as readonly string[]).includes(name);
}

/** ActiveSync commands that hold a request open on purpose (Ping, and Sync with Wait). */
const ACTIVESYNC_LONG_POLLS: ReadonlySet<string> = new Set(['ping', 'sync']);
/** Longest silence for an ActiveSync command that answers at once (SendMail, FolderSync, …). */
const ACTIVESYNC_SHORT_SECONDS = 300;

/**
 * The idle timeout of one request: the service's, except ActiveSync commands known not to be
 * long-polls, which get at most 300 s. A command the gateway cannot read (the base64 query form
 * of EAS 12.1+) keeps the long timeout.
 */
export function requestIdleMs(service: Service, settings: ServiceDefaults, operation: string | null): number {
  const seconds =
    service === 'activesync' && operation !== null && !ACTIVESYNC_LONG_POLLS.has(operation.toLowerCase())
      ? Math.min(settings.idleTimeoutSeconds, ACTIVESYNC_SHORT_SECONDS)
      : settings.idleTimeoutSeconds;
  return seconds * 1000;
}
