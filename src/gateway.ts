/**
 * handle(), the pipeline every request takes (the TLS/HTTP server that calls it is server.ts).
 * handle() is the table of contents of a request:
 *
 *   classify → (refuse before asking for credentials) → authenticate (Basic | NTLM) → authorize →
 *   forward | deny
 *
 * and one access record, written when the response closes. Each stage returns a value and the
 * pipeline branches on it; deny() in proxy.ts writes every refusal of a parsed request
 * (client-error.ts and rpc-tunnel.ts answer on the raw socket what Node's parser cannot take).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { activeSyncCommand, newAccessRecord, type AccessRecord } from './access-log.js';
import { authorize, authorizeAnonymous } from './authorize.js';
import { checkHead, classify, type Route } from './classify.js';
import type { AuthOutcome } from './authenticate.js';
import { parseBasic, parseLogon } from './credentials.js';
import { parseType3, readNtlmHeader } from './ntlm.js';
import { authenticateNtlm, logonOf, type NtlmOutcome } from './ntlm-auth.js';
import { challengesFor, declaredBodyTooLarge, deny, fail, forward, respond } from './proxy.js';
import { answerAutodiscoverJson, isAutodiscoverJson } from './autodiscover.js';
import { requestIdleMs, type AuthMode, type Service } from './services.js';
import type { Metrics } from './metrics.js';
import type { State } from './state.js';

/** What the gateway reports to: the access log, the operational log, the metrics. */
export interface Telemetry {
  readonly access: Logger;
  readonly app: Logger;
  readonly metrics: Metrics;
}

/** Told of forwarded requests that are long-polls (a graceful stop cuts those first). */
export type LongPollHook = (res: ServerResponse) => void;

/** The pipeline. `state` is read once per request, so a reload never splits a request in two. */
export async function handle(req: IncomingMessage, res: ServerResponse, state: State, logs: Telemetry, onLongPoll?: LongPollHook): Promise<void> {
  const record = newAccessRecord(req.socket, req);
  const written = recordOnceDone(logs, record, res);
  try {
    await pipeline(req, res, record, state, logs.metrics, onLongPoll);
  } catch (err) {
    logs.app.error({ err, path: record.path }, 'internal error while handling a request');
    fail(req, res, record, 'upstream-error', { detail: 'internal error' });
  } finally {
    // Refused before authentication (a path, a name, a limit): still say who the client claimed to be.
    if (record.decision === 'deny' && record.user === null) record.user = claimedUser(req.headers.authorization, state);
    written.settled();
  }
}

async function pipeline(req: IncomingMessage, res: ServerResponse, record: AccessRecord, state: State, metrics: Metrics, onLongPoll?: LongPollHook): Promise<void> {
  const route = admit(req, res, record, state);
  if (!route) return;                               // refused or answered before any credentials
  const settings = state.config.services[route.service];

  const authStarted = performance.now();
  const auth = await authenticate(req, { service: route.service, path: route.path, query: queryOf(req.url ?? '') }, settings.auth, state);
  metrics.authDuration.observe({ cache: auth.cache ?? 'none' }, (performance.now() - authStarted) / 1000);
  record.user = (auth.ok ? auth.identity?.user : auth.user) || null;
  record.cache = auth.cache;
  const challenges = challengesFor(settings.auth, state.realm);
  if (!auth.ok) return deny(req, res, record, auth.reason, { challenges, detail: auth.detail, status: auth.status });
  const settle = 'onStatus' in auth ? ntlmVerdict(record, auth.onStatus) : undefined;

  // An NTLM Type 3 refused here, or whose client left meanwhile, never reaches Exchange.
  if (!authorized(req, res, record, route.service, auth, state) || res.destroyed) return settle?.(null);

  if (!auth.identity) boundHandshakeBody(req, res, record);
  metrics.inFlight.inc({ service: route.service });
  res.once('close', () => metrics.inFlight.dec({ service: route.service }));
  const idleMs = auth.identity ? requestIdleMs(route.service, settings, record.operation) : HANDSHAKE_IDLE_MS;
  if (idleMs > LONG_POLL_MS) onLongPoll?.(res);
  forward(req, res, record, { host: route.host, settings, idleMs, auth: settings.auth, challenges, onStatus: settle }, state.upstream);
}

/**
 * What is decided before credentials: the head, the name and path (classify), the declared body
 * size, services denied to everyone, and autodiscover.json (answered by the gateway). Returns the
 * route when the request goes on to authentication; null when it has been answered.
 */
function admit(req: IncomingMessage, res: ServerResponse, record: AccessRecord, state: State): Route | null {
  const head = checkHead(req);
  if (head) { deny(req, res, record, head.reason, { detail: head.detail, ...(head.status ? { status: head.status } : {}) }); return null; }
  const route = classify((req.socket as TLSSocket).servername, req.headers.host, req.url ?? '', state.config.names);
  if (!route.ok) {
    if (route.reason === 'unknown-service') record.service = 'unknown';
    deny(req, res, record, route.reason, { detail: route.detail });
    return null;
  }
  record.service = route.service;
  if (route.service === 'activesync') record.operation = activeSyncCommand(req.url ?? '');
  const settings = state.config.services[route.service];
  if (declaredBodyTooLarge(req, settings)) { deny(req, res, record, 'too-large', { detail: `limit ${settings.maxBodyBytes} bytes` }); return null; }
  const refused = authorizeAnonymous(route.service, state.policy);
  if (refused) {
    record.rule = refused.rule;
    deny(req, res, record, refused.reason);
    return null;
  }
  // Anonymous by design, never forwarded: see autodiscover.ts.
  if (route.service === 'autodiscover' && isAutodiscoverJson(route.path)) {
    const answer = answerAutodiscoverJson(req, route.path, req.url ?? '', state.realm);
    if (answer.kind === 'refuse') { deny(req, res, record, 'bad-request', { detail: answer.detail, status: answer.status }); return null; }
    respond(res, record, 'application/json; charset=utf-8', answer.body, 'autodiscover.json answered by the gateway');
    return null;
  }
  return route;
}

/**
 * The policy's decision for an authenticated identity; an NTLM negotiate leg (no identity yet)
 * passes with no big body. Writes the refusal; true when the request may be forwarded.
 */
function authorized(req: IncomingMessage, res: ServerResponse, record: AccessRecord, service: Service, auth: Extract<AuthOutcome | NtlmOutcome, { ok: true }>, state: State): boolean {
  if (auth.identity) {
    const decision = authorize(service, auth.identity, state.policy);
    record.rule = decision.rule;
    if (!decision.allow) {
      deny(req, res, record, decision.reason);
      return false;
    }
    record.reason = decision.reason;
  } else {
    if (Number(req.headers['content-length'] ?? 0) > HANDSHAKE_MAX_BODY || req.headers['transfer-encoding'] !== undefined) {
      deny(req, res, record, 'too-large', { detail: 'an NTLM handshake request carries no big body' });
      return false;
    }
    record.reason = 'allowed';
    record.detail = 'detail' in auth ? auth.detail : null;
  }
  record.decision = 'allow';
  return true;
}

/**
 * An anonymous NTLM leg holds an upstream connection while its body arrives: it gets
 * HANDSHAKE_BODY_MS for the whole body (a byte every few seconds would pass any idle timeout).
 */
function boundHandshakeBody(req: IncomingMessage, res: ServerResponse, record: AccessRecord): void {
  if (req.complete) return;
  const timer = setTimeout(() => {
    if (!req.complete) deny(req, res, record, 'bad-request', { status: 408, detail: 'NTLM handshake body not received in time' });
  }, HANDSHAKE_BODY_MS);
  timer.unref();
  res.once('close', () => clearTimeout(timer));
}

/**
 * Exchange's answer to a forwarded NTLM Type 3 settles it; a 401 is Exchange refusing the proof
 * (a wrong password), logged as such although the request was forwarded: Exchange decided.
 */
function ntlmVerdict(record: AccessRecord, settle: ((status: number | null) => void) | undefined): ((status: number | null) => void) | undefined {
  if (!settle) return undefined;
  return (status) => {
    settle(status);
    if (status === 401) Object.assign(record, { decision: 'deny', reason: 'bad-credentials', detail: 'Exchange refused the NTLM logon' });
  };
}

/** The account an Authorization header names, never verified: for the record of a refusal. */
function claimedUser(header: string | undefined, state: State): string | null {
  const basic = parseBasic(header);
  if (basic !== null && basic !== 'malformed') return parseLogon(basic.user, state.domain).display || null;
  const ntlm = readNtlmHeader(header);
  if (ntlm === null || ntlm === 'malformed' || ntlm.type !== 3) return null;
  const claim = parseType3(ntlm.message);
  return claim && !claim.anonymous ? logonOf(claim, state).display || null : null;
}

/**
 * Basic or NTLM, as the service's clients speak (`services.<name>.auth`). A connection Exchange
 * accepted by NTLM carries on without credentials only when a request has no Authorization at
 * all: any other scheme on it is judged for itself, never waved through as the session's user.
 */
function authenticate(req: IncomingMessage, route: { service: Service; path: string; query: string }, mode: AuthMode, state: State): Promise<AuthOutcome | NtlmOutcome> {
  const header = req.headers.authorization;
  const context = { source: req.socket.remoteAddress ?? '', groupDns: state.policy.groupDns, policyVersion: state.policy.version };
  if (mode === 'basic' || (mode === 'basic+ntlm' && parseBasic(header) !== null)) {
    return state.authenticator.authenticate({ header, ...context, connection: req.socket });
  }
  const token = readNtlmHeader(header);
  if (header !== undefined && token === null) {
    return Promise.resolve({ ok: false, reason: 'bad-credentials', user: null, cache: null, detail: 'an Authorization scheme this service does not take' });
  }
  if (token !== null && token !== 'malformed' && token.type !== 'kerberos' && !ntlmEndpoint(route)) {
    return Promise.resolve({ ok: false, reason: 'bad-credentials', user: null, cache: null, detail: 'NTLM is taken on the canonical endpoints only' });
  }
  return authenticateNtlm(req.socket, token, {
    ...context, authenticator: state.authenticator, upstream: state.upstream, domain: state.domain, dnsDomains: state.dnsDomains,
  });
}

/** A request allowed to stay silent longer than this counts as a long-poll. */
const LONG_POLL_MS = 300_000;
/** An NTLM handshake leg (no identity yet) may carry this much body, and wait this long. */
const HANDSHAKE_MAX_BODY = 64 * 1024;
const HANDSHAKE_IDLE_MS = 30_000;
const HANDSHAKE_BODY_MS = 10_000;

/**
 * Where NTLM handshakes are taken: the endpoints Outlook authenticates against. Elsewhere IIS
 * may answer before authenticating (request filtering, anonymous pages), and a non-401 answer
 * there would look like Exchange accepted a forged Type 3.
 */
function ntlmEndpoint(route: { path: string; query: string }): boolean {
  if (route.query.length > 1024) return false;
  return NTLM_PATHS.has(route.path) || OAB_FILE.test(route.path);
}
const NTLM_PATHS: ReadonlySet<string> = new Set([
  '/mapi/emsmdb', '/mapi/emsmdb/', '/mapi/nspi', '/mapi/nspi/', '/ews/exchange.asmx', '/autodiscover/autodiscover.xml',
]);
const OAB_FILE = /^\/oab\/[0-9a-f-]{36}\/[a-z0-9._-]+$/;

function queryOf(url: string): string {
  const q = url.indexOf('?');
  return q < 0 ? '' : url.slice(q + 1);
}

/**
 * Writes the record once both the response has closed and the pipeline has settled: a client
 * that leaves while the directory answers is still logged with its user and reason.
 */
export function recordOnceDone(out: Telemetry, record: AccessRecord, res: ServerResponse): { settled(): void } {
  const started = performance.now();
  let closed = false;
  let settled = false;
  const write = () => {
    if (!closed || !settled) return;
    record.status = res.headersSent ? res.statusCode : 499;
    record.durationMs = Math.round(performance.now() - started);
    out.access.info(record);
    out.metrics.observe(record);
  };
  res.once('close', () => { closed = true; write(); });
  return { settled: () => { settled = true; write(); } };
}
