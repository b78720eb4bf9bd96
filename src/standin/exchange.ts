/**
 * The Exchange stand-in: a small HTTP(S) server that answers like the Exchange endpoints the
 * gateway forwards to (MAPI over HTTP, ActiveSync, EWS, Autodiscover, OWA), for the demo's
 * upstream and for integration tests that must prove whether a request reached "Exchange".
 *
 * It is honestly a stand-in: it checks no Basic credentials (any Authorization header is accepted),
 * and its bodies are only shaped like Exchange's. With `ntlmUsers` it does check NTLM, for real:
 * it runs the connection-oriented NTLM handshake of IIS (the challenge belongs to one TCP
 * connection, which is then authenticated as a whole) and verifies NTLMv2 against the passwords
 * it was given (./ntlm-server.ts), so a gateway in front of it must carry the handshake intact.
 * With `formsUsers` it also runs OWA/ECP's forms-based sign-in, cookies and all (./owa-forms.ts).
 * What it also copies faithfully is the timing of the long-lived protocols, because that is what
 * a gateway's timeouts and buffering get wrong: MAPI NotificationWait streams
 * PROCESSING/PENDING/DONE, ActiveSync Ping sends nothing until its heartbeat passes, and EWS
 * streaming notifications trickle keep-alive chunks.
 * "research §4" below is §4 of the project's research notes, node-proxy.md.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import {
  createServer as createHttpServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { DEFAULT_SERVER_NAME, ProbeResponder, serverControls, stopListening, type HealthControls } from './health.js';
import { MAX_FORM_BYTES, OwaForms } from './owa-forms.js';
import {
  buildType2,
  readNtlmAuthorization,
  readType3,
  type1Flags,
  verifyType3,
  type Handshake,
} from './ntlm-server.js';

/** StandinOptions configures {@link startExchangeStandin}. Every field is optional. */
export interface StandinOptions {
  /** Address to listen on. Default `'127.0.0.1'`. */
  host?: string;
  /** Port to listen on. Default `0` (an ephemeral port; read it back from `ExchangeStandin.port`). */
  port?: number;
  /** Serve HTTPS with this certificate and key. Default: plain HTTP. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /**
   * MAPI NotificationWait PENDING interval. Default `30000` ms, Exchange's default X-PendingPeriod
   * (MS-OXCMAPIHTTP 2.2.3.3.5).
   */
  pendingMs?: number;
  /**
   * How long NotificationWait holds before DONE. Default `300000` ms, the
   * 5-minute maximum of MS-OXCMAPIHTTP 3.2.5.5.
   */
  notificationWaitMs?: number;
  /** Receives one line per finished or abandoned response. Default: no logging. */
  log?: (line: string) => void;
  /**
   * Verify NTLM: lower-case user name → password. When set, `Authorization: NTLM` (or `Negotiate`
   * carrying raw NTLMSSP) runs the handshake of IIS per TCP connection: Type 1 → 401 with a Type 2
   * and a fresh challenge for that connection; Type 3 → NTLMv2 checked against
   * `ntlmUsers[user.toLowerCase()]`, and on success the connection is authenticated: its later
   * requests without Authorization run as `DOMAIN\user`. Kerberos, SPNEGO-wrapped or malformed
   * tokens get the 401 challenges. Basic stays unchecked. Default: NTLM headers are accepted
   * unchecked, like any other Authorization header.
   */
  ntlmUsers?: Record<string, string>;
  /** How long a Type 3 takes to verify (Exchange asks a DC; slow under load). Default 0. */
  ntlmVerifyDelayMs?: number;
  /**
   * NetBIOS domain name the stand-in's Type 2 announces. A Type 3 must name this domain, the DNS
   * domain `ntlmDnsDomain` (both case-insensitive) or none (then the user is looked up as given,
   * e.g. a UPN). Default `'LAB'`.
   */
  ntlmDomain?: string;
  /** DNS domain name announced in the Type 2 and accepted in a Type 3. Default `'lab.test'`. */
  ntlmDnsDomain?: string;
  /** Server FQDN in healthcheck.htm bodies and the `X-Standin-Server` header. Default `'EXCH-FE01.lab.test'`. */
  name?: string;
  /**
   * Run Exchange's forms-based sign-in for /owa and /ecp: lower-case user name → password, checked for
   * `DOMAIN\user` (`ntlmDomain` or `ntlmDnsDomain`), `user@<ntlmDnsDomain>` or `user`. Requests to
   * /owa and /ecp without Authorization then need the cookies of a sign-in (else 302 to logon.aspx, or
   * 440); with Authorization they pass as before. Default: no forms sign-in, /owa answers 401 like the rest.
   */
  formsUsers?: Record<string, string>;
  /** Lifetime of a forms cookie set, extended on use. Default: 1.5 × OWA's timeout (12 h private, 22.5 min public). */
  formsSessionMs?: number;
}

/** Which NTLM leg a request was: a Type 1, a Type 3, or a request on an NTLM-authenticated connection. */
export type NtlmLeg = 'type1' | 'type3' | 'session' | null;

/**
 * SeenRequest is one request that reached the stand-in. Secrets are never stored: the
 * `authorization`, `proxy-authorization` and `cookie` headers read `'[redacted]'`, `user` is only
 * the user-id part of Basic credentials or the names an NTLM Type 3 claims, and no NTLM token
 * is kept.
 */
export interface SeenRequest {
  method: string;
  /** The request target exactly as received. */
  url: string;
  headers: Record<string, string | string[] | undefined>;
  /**
   * User name from a Basic Authorization header (text before the first colon); for an NTLM Type 3
   * the `DOMAIN\user` it claims (just `user` when its domain is empty), whether or not it verified;
   * for a request on an NTLM-authenticated connection, that connection's `DOMAIN\user`; for the forms
   * sign-in POST the `username` field as typed; for a request with signed-in forms cookies their
   * `DOMAIN\user`; else null.
   */
  user: string | null;
  /**
   * `'type1'` / `'type3'`: the request carried an NTLM Type 1 / Type 3 (under `NTLM` or
   * `Negotiate`); `'session'`: it carried no Authorization and ran as the user its connection
   * authenticated earlier (only with `ntlmUsers`); null otherwise.
   */
  ntlm: NtlmLeg;
  bodyBytes: number;
  bodySha256: string;
  /** Incrementing id of the TCP connection, to observe connection reuse and pinning. */
  socketId: number;
  /** `Date.now()` when the request's headers arrived. */
  at: number;
  /** A Managed Availability probe (`GET /<vdir>/healthcheck.htm`, ./health.ts), answered before authentication. */
  probe: boolean;
}

/** ExchangeStandin is a running stand-in, returned by {@link startExchangeStandin}. */
export interface ExchangeStandin extends HealthControls {
  /** Base URL, e.g. `https://127.0.0.1:41234`. */
  url: string;
  port: number;
  /** Every request that reached it, appended once its body has been fully read. */
  requests: SeenRequest[];
  /** seen counts the recorded requests matching `pred` (all of them by default). */
  seen(pred?: (r: SeenRequest) => boolean): number;
  /** reset empties `requests` in place. */
  reset(): void;
  /** Lets one more user through the forms sign-in (with `formsUsers`). */
  addFormsUser(user: string, password: string): void;
  /** close stops listening, destroys open sockets and clears all timers. Safe to call twice. */
  close(): Promise<void>;
}

const DEFAULT_HOST = '127.0.0.1';
const DEFAULT_PENDING_MS = 30_000;
const DEFAULT_NOTIFICATION_WAIT_MS = 300_000;
/** 60 s is the lowest HeartbeatInterval Exchange accepts (MS-ASCMD 2.2.3.88.1 leaves it to the server). */
const DEFAULT_HEARTBEAT_MS = 60_000;
const DEFAULT_STREAM_COUNT = 3;
const DEFAULT_SLOW_HEADERS_MS = 1_000;
const DEFAULT_BIG_BYTES = 1024 * 1024;
const DEFAULT_NTLM_DOMAIN = 'LAB';
const DEFAULT_NTLM_DNS_DOMAIN = 'lab.test';
/** The NetBIOS computer name in the Type 2, the same server X-FEServer names. */
const NTLM_COMPUTER = 'EXCH-FE01';
const MAX_TIMER_MS = 2 ** 31 - 1; // larger values make setTimeout fire after 1 ms

// Exchange's IIS offers all three schemes, each in its own header line; clients pick the first they support.
const CHALLENGES = ['Negotiate', 'NTLM', 'Basic realm="exchange-standin"'];

// What real Exchange leaks about its internal servers on every response. A gateway should strip these.
const LEAKY_HEADERS: Readonly<Record<string, string>> = {
  'X-FEServer': 'EXCH-FE01',
  'X-BEServer': 'EXCH-BE01.lab.test',
  'X-CalculatedBETarget': 'exch-be01.lab.test',
  'X-DiagInfo': 'EXCH-BE01',
  'X-BackEndHttpStatus': '200',
  'X-Powered-By': 'ASP.NET',
  Server: 'Microsoft-IIS/10.0',
};

const SECRET_HEADERS = ['authorization', 'proxy-authorization', 'cookie'];
const BASIC_CREDENTIALS = /^basic[ \t]+([A-Za-z0-9+/=]+)[ \t]*$/i;
const DECIMAL = /^\d+$/;
const UTF8 = new TextDecoder('utf-8', { fatal: true });

const MAPI_CONTENT_TYPE = 'application/mapi-http';
// Minimal MAPI response bodies, all fields zero (success). NotificationWait's body is StatusCode,
// ErrorCode, EventPending flags, AuxiliaryBufferSize; the others get StatusCode, ErrorCode,
// AuxiliaryBufferSize, the shape of a Disconnect body (real Connect/Execute bodies carry more).
const NOTIFICATION_WAIT_BODY = Buffer.alloc(16);
const MAPI_BODY = Buffer.alloc(12);

const WBXML = 'application/vnd.ms-sync.wbxml';
const EAS_VERSIONS = '2.0,2.1,2.5,12.0,12.1,14.0,14.1,16.0,16.1';
const EAS_COMMANDS =
  'Sync,SendMail,SmartForward,SmartReply,GetAttachment,GetHierarchy,CreateCollection,DeleteCollection,' +
  'MoveCollection,FolderSync,FolderCreate,FolderDelete,FolderUpdate,MoveItems,GetItemEstimate,' +
  'MeetingResponse,Search,Settings,Ping,ItemOperations,Provision,ResolveRecipients,ValidateCert,Find';
// <Ping><Status>1</Status></Ping>: "the heartbeat interval expired before any changes occurred"
// (MS-ASCMD Status (Ping)). WBXML 1.3, UTF-8, SWITCH_PAGE to code page 13 (Ping, MS-ASWBXML),
// Ping=0x05 and Status=0x07 with the has-content bit 0x40, STR_I "1", END, END.
const PING_EXPIRED_WBXML = Buffer.from([0x03, 0x01, 0x6a, 0x00, 0x00, 0x0d, 0x45, 0x47, 0x03, 0x31, 0x00, 0x01, 0x01]);

const EWS_KEEPALIVE =
  '<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body>' +
  '<GetStreamingEventsResponse xmlns="http://schemas.microsoft.com/exchange/services/2006/messages">' +
  '<ResponseMessages><GetStreamingEventsResponseMessage ResponseClass="Success"><ResponseCode>NoError</ResponseCode>' +
  '<ConnectionStatus>OK</ConnectionStatus></GetStreamingEventsResponseMessage></ResponseMessages>' +
  '</GetStreamingEventsResponse></Body></Envelope>\r\n';

// Byte i of /owa/standin/big is i & 0xff; the chunk length is a multiple of 256 so every chunk starts aligned.
const FILLER = Buffer.from(Array.from({ length: 64 * 1024 }, (_, i) => i & 0xff));

/** NTLM settings, present when `ntlmUsers` is set. */
interface NtlmConfig {
  readonly users: ReadonlyMap<string, string>;
  readonly domain: string;
  readonly dnsDomain: string;
}

/** Where one TCP connection stands in the NTLM handshake. */
type NtlmConnection =
  | ({ readonly phase: 'challenged' } & Handshake)
  | { readonly phase: 'authenticated'; readonly user: string };

interface State {
  readonly probes: ProbeResponder;
  readonly ntlm: NtlmConfig | undefined;
  /** Forms sign-in, only with `formsUsers`. */
  readonly forms: OwaForms | undefined;
  /** Per TCP connection (keyed by its socket), only with `ntlmUsers`. */
  readonly ntlmConnections: WeakMap<object, NtlmConnection>;
  readonly pendingMs: number;
  readonly notificationWaitMs: number;
  readonly ntlmVerifyDelayMs: number;
  readonly log: ((line: string) => void) | undefined;
  readonly requests: SeenRequest[];
  readonly liveTimers: Set<Timers>;
  readonly socketIds: WeakMap<object, number>;
  nextSocketId: number;
  mapiSequence: number;
}

interface BodyDigest {
  bytes: number;
  sha256: string;
  /** The body itself, only when asked to keep it and no larger than asked. */
  kept?: Buffer;
}

/** One request in flight: what the handlers need, parsed once. */
interface Call {
  readonly state: State;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  /** Lower-cased pathname: IIS matches paths case-insensitively (`/EWS` = `/ews`). */
  readonly path: string;
  readonly query: URLSearchParams;
  readonly user: string | null;
  /** The request may pass the 401 gate: it carried Authorization, or its connection is NTLM-authenticated. */
  readonly authenticated: boolean;
  readonly ntlm: NtlmLeg;
  readonly socketId: number;
  readonly body: BodyDigest;
  readonly timers: Timers;
}

type Handler = (c: Call) => void;

/** Timers owned by one request, cleared together when its response closes or the stand-in stops. */
class Timers {
  readonly #handles = new Set<NodeJS.Timeout>();

  constructor(private readonly registry: Set<Timers>) {
    registry.add(this);
  }

  after(ms: number, fn: () => void): void {
    const handle = setTimeout(() => {
      this.#handles.delete(handle);
      fn();
    }, ms);
    this.#handles.add(handle);
  }

  every(ms: number, fn: () => void): void {
    this.#handles.add(setInterval(fn, ms));
  }

  clear(): void {
    for (const handle of this.#handles) clearTimeout(handle); // clearTimeout also clears intervals
    this.#handles.clear();
    this.registry.delete(this);
  }
}

/**
 * startExchangeStandin starts the stand-in and resolves once it is listening.
 * Defaults: host `127.0.0.1`, port `0` (ephemeral), plain HTTP unless `tls` is given,
 * pendingMs `30000`, notificationWaitMs `300000`, no log, NTLM unchecked (domain `LAB`,
 * DNS domain `lab.test` once `ntlmUsers` is set).
 */
export async function startExchangeStandin(opts: StandinOptions = {}): Promise<ExchangeStandin> {
  const state: State = {
    probes: new ProbeResponder(opts.name ?? DEFAULT_SERVER_NAME),
    ntlm: opts.ntlmUsers
      ? {
          users: new Map(Object.entries(opts.ntlmUsers).map(([user, password]) => [user.toLowerCase(), password])),
          domain: opts.ntlmDomain ?? DEFAULT_NTLM_DOMAIN,
          dnsDomain: opts.ntlmDnsDomain ?? DEFAULT_NTLM_DNS_DOMAIN,
        }
      : undefined,
    forms: opts.formsUsers
      ? new OwaForms({
          users: opts.formsUsers,
          domain: opts.ntlmDomain ?? DEFAULT_NTLM_DOMAIN,
          dnsDomain: opts.ntlmDnsDomain ?? DEFAULT_NTLM_DNS_DOMAIN,
          sessionMs: opts.formsSessionMs,
        })
      : undefined,
    ntlmConnections: new WeakMap(),
    pendingMs: opts.pendingMs ?? DEFAULT_PENDING_MS,
    ntlmVerifyDelayMs: opts.ntlmVerifyDelayMs ?? 0,
    notificationWaitMs: opts.notificationWaitMs ?? DEFAULT_NOTIFICATION_WAIT_MS,
    log: opts.log,
    requests: [],
    liveTimers: new Set(),
    socketIds: new WeakMap(),
    nextSocketId: 1,
    mapiSequence: 0,
  };
  const server = createServer(opts.tls, (req, res) => void handle(state, req, res));
  configureTimeouts(server);
  const sockets = trackSockets(server);
  const host = opts.host ?? DEFAULT_HOST;
  await listen(server, opts.port ?? 0, host);

  const port = (server.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;
  return {
    url: `${opts.tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    requests: state.requests,
    seen: (pred) => (pred ? state.requests.filter(pred).length : state.requests.length),
    addFormsUser: (user, password) => state.forms?.addUser(user, password),
    reset: () => {
      state.requests.length = 0;
    },
    close: () => (closing ??= shutdown(server, sockets, state)),
    ...serverControls(server, sockets, state.probes, { port, host }, () => closing !== undefined),
  };
}

function createServer(
  tls: StandinOptions['tls'],
  listener: (req: IncomingMessage, res: ServerResponse) => void,
): Server {
  return tls ? createHttpsServer({ cert: tls.cert, key: tls.key }, listener) : createHttpServer(listener);
}

function configureTimeouts(server: Server): void {
  server.requestTimeout = 0; // Node's 300 s default covers the body and would cut slow uploads (research §4)
  server.headersTimeout = 60_000;
  server.keepAliveTimeout = 120_000; // IIS closes idle connections after 120 s (connectionTimeout)
}

function trackSockets(server: Server): Set<Socket> {
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  return sockets;
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

async function shutdown(server: Server, sockets: Set<Socket>, state: State): Promise<void> {
  for (const timers of [...state.liveTimers]) timers.clear();
  await stopListening(server, sockets); // also after kill()
}

/** handle reads and records the request, then hands it to the handler its path selects. */
async function handle(state: State, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const at = Date.now();
  let user = basicUser(req.headers.authorization);
  let note = '';
  const timers = new Timers(state.liveTimers);
  res.once('close', () => {
    timers.clear(); // the client went away or the response ended: no more PENDING, keep-alives or heartbeats
    state.log?.(logLine(req, res, user, note));
  });
  for (const [name, value] of Object.entries(LEAKY_HEADERS)) res.setHeader(name, value);
  res.setHeader('request-id', randomUUID());
  res.setHeader('X-Standin-Server', state.probes.name); // not an Exchange header: the gateway passes it on

  const { path, query } = parseTarget(req.url);
  const method = req.method ?? 'GET';
  let body: BodyDigest;
  try {
    body = await readBody(req, state.forms?.keepsBody(method, path) === true ? MAX_FORM_BYTES : 0);
  } catch {
    return; // the client went away mid-body: the request never fully reached us, so it is not recorded
  }
  const socketId = socketIdOf(state, req.socket);
  // Exchange answers probes in OnBeginRequest, before authentication (research/owa-pool-ha.md B).
  const probed = state.probes.serviceOf(req.method, parseTarget(req.url).path);
  if (probed !== null) {
    state.requests.push({ ...toSeen(req, null, null, body, at, socketId), probe: true });
    return state.probes.answer(probed, req, res);
  }
  const step = ntlmStep(state, req);
  if (step.leg === 'type3' && state.ntlmVerifyDelayMs > 0)
    await new Promise((r) => setTimeout(r, state.ntlmVerifyDelayMs));
  const formsUser = state.forms?.userOf(method, path, req.headers.cookie, body.kept) ?? null;
  user = step.user ?? formsUser;
  note = step.note ?? '';
  state.requests.push(toSeen(req, user, step.leg, body, at, socketId));
  if (step.reply !== undefined) {
    return send(res, 401, 'text/plain', '401 Unauthorized\n', { 'WWW-Authenticate': step.reply });
  }

  const call: Call = {
    state,
    req,
    res,
    path,
    query,
    user,
    body,
    timers,
    socketId,
    authenticated: step.authenticated || formsUser !== null,
    ntlm: step.leg,
  };
  try {
    const forms = { req, res, path, query, body: body.kept, authorized: step.authenticated, user: step.user };
    if (state.forms?.serve(forms)) return;
    pick(call)(call);
  } catch (err) {
    fail(res, err);
  }
}

/** pick is the routing table. Order matters: anonymous paths, then the 401 gate, then the rest. */
function pick(c: Call): Handler {
  const { path } = c;
  const method = c.req.method ?? 'GET';
  // autodiscover.json is anonymous by design (research §4, Autodiscover)
  if (path.startsWith('/autodiscover/autodiscover.json')) return autodiscoverJson;
  if (!c.authenticated || path.endsWith('/standin/401')) return challenge;
  if (method === 'POST' && (under(path, '/mapi/emsmdb') || under(path, '/mapi/nspi'))) return mapi;
  if (under(path, '/microsoft-server-activesync')) return activeSync;
  if (method === 'POST' && path === '/ews/exchange.asmx') return ews;
  if (method === 'POST' && path === '/autodiscover/autodiscover.xml') return autodiscoverXml;
  if (path === '/ews/standin/cut') return cut;
  if (path === '/ews/standin/slow-headers') return slowHeaders;
  if (path === '/owa/standin/big') return big;
  return hello;
}

function under(path: string, prefix: string): boolean {
  return path === prefix || path.startsWith(`${prefix}/`);
}

// ---------------------------------------------------------------------------------------------
// NTLM, connection-oriented like IIS

/** What the Authorization header (or its absence) means for one request. */
interface NtlmStep {
  readonly leg: NtlmLeg;
  /** The request's user, see SeenRequest.user. */
  readonly user: string | null;
  /** May pass the 401 gate. */
  readonly authenticated: boolean;
  /** Answer 401 with these WWW-Authenticate values instead of routing the request. */
  readonly reply?: string | string[];
  /** Why an NTLM step failed, for the log line. */
  readonly note?: string;
}

/**
 * ntlmStep advances the request's TCP connection through the NTLM handshake. Without
 * `ntlmUsers` it only classifies the header for the record, and any Authorization passes.
 */
function ntlmStep(state: State, req: IncomingMessage): NtlmStep {
  const header = req.headers.authorization;
  const token = readNtlmAuthorization(header);
  const config = state.ntlm;
  if (!config) {
    if (token === null || token === 'other')
      return { leg: null, user: basicUser(header), authenticated: header !== undefined };
    if (token.type === 1) return { leg: 'type1', user: null, authenticated: true };
    if (token.type === 3) return { leg: 'type3', user: claimOf(token.message), authenticated: true };
    return { leg: null, user: null, authenticated: true };
  }

  const connections = state.ntlmConnections;
  const socket = req.socket;
  if (header === undefined) {
    const connection = connections.get(socket);
    return connection?.phase === 'authenticated'
      ? { leg: 'session', user: connection.user, authenticated: true }
      : { leg: null, user: null, authenticated: false };
  }
  if (token === null) return { leg: null, user: basicUser(header), authenticated: true }; // Basic: unchecked, as always

  if (token === 'other' || (token.type !== 1 && token.type !== 3)) {
    connections.delete(socket);
    return { leg: null, user: null, authenticated: false, reply: CHALLENGES, note: 'ntlm=unusable token' };
  }
  if (token.type === 1) {
    const clientFlags = type1Flags(token.message);
    if (clientFlags === null) {
      connections.delete(socket);
      return { leg: 'type1', user: null, authenticated: false, reply: CHALLENGES, note: 'ntlm=malformed type 1' };
    }
    const challenge = randomBytes(8);
    const type2 = buildType2({
      challenge,
      clientFlags,
      domain: config.domain,
      dnsDomain: config.dnsDomain,
      computer: NTLM_COMPUTER,
    });
    connections.set(socket, { phase: 'challenged', type1: Buffer.from(token.message), type2, challenge });
    return { leg: 'type1', user: null, authenticated: false, reply: `${token.scheme} ${type2.toString('base64')}` };
  }

  // A Type 3 is good for the one challenge this connection got: whatever happens, that is used up.
  const connection = connections.get(socket);
  connections.delete(socket);
  const parsed = readType3(token.message);
  const user = claimOf(token.message);
  const fail = (why: string): NtlmStep => ({
    leg: 'type3',
    user,
    authenticated: false,
    reply: CHALLENGES,
    note: `ntlm=${why}`,
  });
  if (!parsed || user === null) return fail('malformed type 3');
  if (connection?.phase !== 'challenged') return fail('no challenge on this connection');
  if (!knownDomain(config, parsed.domain)) return fail('unknown domain');
  const verdict = verifyType3(connection, token.message, parsed, config.users.get(parsed.user.toLowerCase()));
  if (!verdict.ok) return fail(verdict.reason);
  connections.set(socket, { phase: 'authenticated', user });
  return { leg: 'type3', user, authenticated: true };
}

/** The `DOMAIN\user` a Type 3 claims (`user` alone when the domain is empty), null when unreadable. */
function claimOf(message: Buffer): string | null {
  const parsed = readType3(message);
  if (!parsed) return null;
  return parsed.domain === '' ? parsed.user : `${parsed.domain}\\${parsed.user}`;
}

function knownDomain(config: NtlmConfig, domain: string): boolean {
  const name = domain.toUpperCase();
  return name === '' || name === config.domain.toUpperCase() || name === config.dnsDomain.toUpperCase();
}

// ---------------------------------------------------------------------------------------------
// Handlers

function challenge(c: Call): void {
  send(c.res, 401, 'text/plain', '401 Unauthorized\n', { 'WWW-Authenticate': CHALLENGES });
}

function hello(c: Call): void {
  const who = c.ntlm !== null && c.user !== null ? `${c.user} (socket ${c.socketId})` : (c.user ?? '-');
  send(c.res, 200, 'text/plain; charset=utf-8', `hello ${who}: ${c.req.method} ${c.req.url}\n`, {
    'X-Standin-Body-Bytes': String(c.body.bytes),
    'X-Standin-Body-Sha256': c.body.sha256,
  });
}

/**
 * mapi answers MAPI over HTTP (MS-OXCMAPIHTTP). The body is chunked and streamed: PROCESSING at once,
 * PENDING every X-PendingPeriod while the server works, then DONE, the final X-ResponseCode,
 * X-ElapsedTime and X-StartTime, a blank line and the binary body (2.2.7 meta-tags, 3.2.5.2).
 */
function mapi(c: Call): void {
  const startedAt = Date.now();
  const requestType = headerText(c.req, 'x-requesttype') ?? '';
  const pendingMs = toMs(c.req.headers['x-standin-pending-ms'], c.state.pendingMs, 1);
  const waits = requestType.toLowerCase() === 'notificationwait';
  c.res.writeHead(200, {
    'Content-Type': MAPI_CONTENT_TYPE,
    'X-RequestType': requestType,
    'X-ResponseCode': '0',
    'X-PendingPeriod': String(pendingMs),
    ...echoed(c.req, ['x-requestid', 'x-clientinfo']),
    ...(waits ? {} : { 'Set-Cookie': mapiCookies(c) }),
  });
  c.res.write('PROCESSING\r\n');
  if (!waits) return finishMapi(c, startedAt, MAPI_BODY);

  // NotificationWait is held until an event occurs or the 5-minute limit passes (3.2.5.5);
  // the stand-in has no events, so it always runs to the limit.
  const waitMs = toMs(c.req.headers['x-standin-wait-ms'], c.state.notificationWaitMs, 0);
  c.timers.every(pendingMs, () => c.res.write('PENDING\r\n'));
  c.timers.after(waitMs, () => {
    c.timers.clear();
    finishMapi(c, startedAt, NOTIFICATION_WAIT_BODY);
  });
}

function finishMapi(c: Call, startedAt: number, body: Buffer): void {
  const meta =
    'DONE\r\nX-ResponseCode: 0\r\n' +
    `X-ElapsedTime: ${Date.now() - startedAt}\r\n` +
    `X-StartTime: ${new Date(startedAt).toUTCString()}\r\n\r\n`;
  c.res.end(Buffer.concat([Buffer.from(meta, 'latin1'), body]));
}

// Session context and request sequence cookies; Exchange names them MapiContext/MapiSequence
// (research §4: from public client/server code, not the spec). Scoped to the endpoint's vdir.
function mapiCookies(c: Call): string[] {
  const path = under(c.path, '/mapi/nspi') ? '/mapi/nspi/' : '/mapi/emsmdb/';
  c.state.mapiSequence += 1;
  return [`MapiContext=${randomUUID()}; path=${path}`, `MapiSequence=${c.state.mapiSequence}; path=${path}`];
}

/** activeSync answers EAS (MS-ASHTTP, MS-ASCMD): OPTIONS discovery, the Ping long poll, other commands at once. */
function activeSync(c: Call): void {
  if (c.req.method === 'OPTIONS') {
    return send(c.res, 200, 'text/plain', '', {
      'MS-Server-ActiveSync': '15.1',
      'MS-ASProtocolVersions': EAS_VERSIONS,
      'MS-ASProtocolCommands': EAS_COMMANDS,
    });
  }
  if (c.req.method === 'POST' && easCommand(c.query) === 'ping') return easPing(c);
  send(c.res, 200, WBXML, '');
}

/**
 * easPing holds a Ping until its heartbeat passes (MS-ASCMD 3.1.5.8; HeartbeatInterval 2.2.3.88.1)
 * and sends nothing meanwhile, not even the status line: every idle timeout on the path must
 * outlast the heartbeat. The heartbeat comes from X-Standin-Heartbeat-Ms, not the WBXML body.
 */
function easPing(c: Call): void {
  const heartbeatMs = toMs(c.req.headers['x-standin-heartbeat-ms'], DEFAULT_HEARTBEAT_MS, 0);
  c.timers.after(heartbeatMs, () => send(c.res, 200, WBXML, PING_EXPIRED_WBXML));
}

// The EAS command is the Cmd query parameter. (EAS 12.1+ may base64-encode the whole query; not decoded here.)
function easCommand(query: URLSearchParams): string | undefined {
  for (const [key, value] of query) if (key.toLowerCase() === 'cmd') return value.toLowerCase();
  return undefined;
}

/** ews reports what it received; with X-Standin-Stream-Ms it streams like GetStreamingEvents instead. */
function ews(c: Call): void {
  if (c.req.headers['x-standin-stream-ms'] !== undefined) return ewsStream(c);
  sendJson(c.res, { bytes: c.body.bytes, sha256: c.body.sha256, user: c.user });
}

// GetStreamingEvents keeps one chunked response open for ConnectionTimeout (1-30 min) and sends
// periodic keep-alive messages in it (research §4, EWS streaming notifications).
function ewsStream(c: Call): void {
  const everyMs = toMs(c.req.headers['x-standin-stream-ms'], 1_000, 1);
  let left = toCount(c.req.headers['x-standin-stream-count'], DEFAULT_STREAM_COUNT);
  c.res.writeHead(200, { 'Content-Type': 'text/xml; charset=utf-8' });
  c.res.flushHeaders();
  if (left === 0) return void c.res.end();
  c.timers.every(everyMs, () => {
    c.res.write(EWS_KEEPALIVE);
    left -= 1;
    if (left > 0) return;
    c.timers.clear();
    c.res.end();
  });
}

function autodiscoverJson(c: Call): void {
  sendJson(c.res, { Protocol: 'EWS', Url: `https://${c.req.headers.host ?? 'localhost'}/EWS/Exchange.asmx` });
}

// A minimal POX Autodiscover response. It names the logon user from the Authorization header,
// not the EMailAddress of the request body (that can differ for delegates; research §4).
function autodiscoverXml(c: Call): void {
  const user = escapeXml(c.user ?? '');
  const ewsUrl = escapeXml(`https://${c.req.headers.host ?? 'localhost'}/EWS/Exchange.asmx`);
  const xml =
    '<?xml version="1.0" encoding="utf-8"?>\r\n' +
    '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006">' +
    '<Response xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a">' +
    `<User><DisplayName>${user}</DisplayName></User>` +
    '<Account><AccountType>email</AccountType><Action>settings</Action>' +
    `<Protocol><Type>EXPR</Type><EwsUrl>${ewsUrl}</EwsUrl></Protocol>` +
    '</Account></Response></Autodiscover>\r\n';
  send(c.res, 200, 'text/xml; charset=utf-8', xml);
}

/** cut sends headers and part of a chunked body, then drops the connection, like a crashed backend. */
function cut(c: Call): void {
  c.res.writeHead(200, { 'Content-Type': 'text/plain' });
  c.res.write('partial body, then the connection is cut\n', () => c.req.socket.destroy());
}

/** slowHeaders waits `?ms=` (default 1000) before sending anything. */
function slowHeaders(c: Call): void {
  c.timers.after(toMs(c.query.get('ms'), DEFAULT_SLOW_HEADERS_MS, 0), () => hello(c));
}

/** big streams `?bytes=` bytes (default 1 MiB, byte i = i & 0xff), waiting for 'drain' whenever write() says so. */
function big(c: Call): void {
  const total = toCount(c.query.get('bytes'), DEFAULT_BIG_BYTES);
  c.res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
  let sent = 0;
  const pump = (): void => {
    while (sent < total && !c.res.destroyed) {
      const chunk = FILLER.subarray(0, Math.min(FILLER.length, total - sent));
      sent += chunk.length;
      if (!c.res.write(chunk)) return void c.res.once('drain', pump);
    }
    if (sent >= total) c.res.end();
  };
  pump();
}

// ---------------------------------------------------------------------------------------------
// Helpers

/**
 * readBody consumes the body, hashing as it goes; it holds no more than one chunk, unless it keeps
 * a body of at most `keepBytes` (the forms sign-in POST).
 */
async function readBody(req: IncomingMessage, keepBytes: number): Promise<BodyDigest> {
  const hash = createHash('sha256');
  let bytes = 0;
  const parts: Buffer[] = [];
  for await (const chunk of req as AsyncIterable<Buffer>) {
    bytes += chunk.length;
    hash.update(chunk);
    if (bytes <= keepBytes) parts.push(chunk);
  }
  const kept = keepBytes > 0 && bytes <= keepBytes ? Buffer.concat(parts) : undefined;
  return { bytes, sha256: hash.digest('hex'), ...(kept ? { kept } : {}) };
}

function toSeen(
  req: IncomingMessage,
  user: string | null,
  ntlm: NtlmLeg,
  body: BodyDigest,
  at: number,
  socketId: number,
): SeenRequest {
  return {
    method: req.method ?? '',
    url: req.url ?? '',
    headers: redact(req.headers),
    user,
    ntlm,
    bodyBytes: body.bytes,
    bodySha256: body.sha256,
    socketId,
    at,
    probe: false,
  };
}

function redact(headers: IncomingHttpHeaders): SeenRequest['headers'] {
  const copy: SeenRequest['headers'] = { ...headers };
  for (const name of SECRET_HEADERS) if (copy[name] !== undefined) copy[name] = '[redacted]';
  return copy;
}

/**
 * basicUser returns the user-id of Basic credentials: RFC 7617 forbids a colon in it, so it is the
 * text before the first colon. UTF-8 first, Latin-1 if that fails. Null when absent or malformed.
 */
function basicUser(authorization: string | undefined): string | null {
  const encoded = BASIC_CREDENTIALS.exec(authorization ?? '')?.[1];
  if (encoded === undefined) return null;
  const raw = Buffer.from(encoded, 'base64');
  let decoded: string;
  try {
    decoded = UTF8.decode(raw);
  } catch {
    decoded = raw.toString('latin1');
  }
  const colon = decoded.indexOf(':');
  return colon < 0 ? null : decoded.slice(0, colon);
}

function socketIdOf(state: State, socket: object): number {
  let id = state.socketIds.get(socket);
  if (id === undefined) {
    id = state.nextSocketId++;
    state.socketIds.set(socket, id);
  }
  return id;
}

function parseTarget(target: string | undefined): { path: string; query: URLSearchParams } {
  try {
    const url = new URL(target ?? '/', 'http://standin.invalid');
    return { path: url.pathname.toLowerCase(), query: url.searchParams };
  } catch {
    return { path: '/', query: new URLSearchParams() };
  }
}

function headerText(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function echoed(req: IncomingMessage, names: string[]): OutgoingHttpHeaders {
  const headers: OutgoingHttpHeaders = {};
  for (const name of names) {
    const value = headerText(req, name);
    if (value !== undefined) headers[name] = value;
  }
  return headers;
}

/** toCount parses a non-negative decimal integer, falling back when absent or malformed. */
function toCount(raw: string | string[] | null | undefined, fallback: number): number {
  const text = (Array.isArray(raw) ? raw[0] : raw)?.trim();
  return text !== undefined && DECIMAL.test(text) ? Number(text) : fallback;
}

/** toMs is toCount for timer delays: at least `min`, at most what setTimeout can hold. */
function toMs(raw: string | string[] | null | undefined, fallback: number, min: number): number {
  return Math.min(MAX_TIMER_MS, Math.max(min, toCount(raw, fallback)));
}

function send(
  res: ServerResponse,
  status: number,
  contentType: string,
  body: string | Buffer,
  extra: OutgoingHttpHeaders = {},
): void {
  res.writeHead(status, { ...extra, 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

function sendJson(res: ServerResponse, value: unknown): void {
  send(res, 200, 'application/json; charset=utf-8', JSON.stringify(value));
}

function fail(res: ServerResponse, err: unknown): void {
  if (res.headersSent) return void res.destroy();
  send(res, 500, 'text/plain', `stand-in error: ${err instanceof Error ? err.message : String(err)}\n`);
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

function logLine(req: IncomingMessage, res: ServerResponse, user: string | null, note: string): string {
  const ended = res.writableFinished ? '' : ' (closed before the response ended)';
  return `standin ${req.method} ${req.url} ${res.statusCode} ${user ?? '-'}${note ? ` ${note}` : ''}${ended}`;
}
