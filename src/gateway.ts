/**
 * The table of contents of a request (server.ts calls handle()). Every request, and every Outlook
 * Anywhere head (judge), takes the same stages, then is forwarded or refused, with one access record:
 *
 *   admit (head, name, path, size, deny-all) → its turn on the connection (pipelined requests are
 *   decided in order) → authenticate (the service's front-end: Basic, NTLM, forms) → authorize
 *   → forward | deny → one access record when the response closes (recordOnceDone)
 *
 * Each stage returns a value and the pipeline branches on it; respond.ts writes every refusal.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { newAccessRecord, writeRecord, type AccessRecord } from './pipeline/access-log.js';
import { authorize } from './pipeline/authorize.js';
import type { Route } from './pipeline/classify.js';
import type { FrontEndOutcome, FrontEndRequest } from './auth/front-ends.js';
import { admit, admitRpc, claiming, type Admitted, type Judged, type Request } from './pipeline/admit.js';
import { onClose } from './pipeline/on-close.js';
import { endTurn, takeTurn } from './pipeline/turns.js';
import { frontEndRequest } from './pipeline/request-view.js';
import { forward } from './upstream/forward.js';
import { deny, fail, respond } from './pipeline/respond.js';
import { readBody } from './pipeline/read-body.js';
import { requestIdleMs, type Service } from './pipeline/services.js';
import type { Metrics } from './runtime/metrics.js';
import type { State } from './runtime/state.js';

/** What the gateway reports to: the access log, the operational log, the metrics. */
export interface Telemetry {
  readonly access: Logger;
  readonly app: Logger;
  readonly metrics: Metrics;
}

/** Told of forwarded requests that are long-polls (a graceful stop cuts those first). */
export type LongPollHook = (res: ServerResponse) => void;

/** The pipeline. `state` is read once per request, so a reload never splits a request in two. */
export async function handle(
  req: IncomingMessage,
  res: ServerResponse,
  state: State,
  logs: Telemetry,
  onLongPoll?: LongPollHook,
): Promise<void> {
  const record = newAccessRecord(req.socket, req);
  const written = recordOnceDone(logs, record, res);
  try {
    await pipeline(req, res, record, state, logs.metrics, onLongPoll);
  } catch (err) {
    logs.app.error({ err, path: record.path }, 'internal error while handling a request');
    fail(req, res, record, 'upstream-error', { detail: 'internal error' });
  } finally {
    written.settled();
  }
}

async function pipeline(
  req: IncomingMessage,
  res: ServerResponse,
  record: AccessRecord,
  state: State,
  metrics: Metrics,
  onLongPoll?: LongPollHook,
): Promise<void> {
  // Admitted synchronously: with nothing undecided before it, a refusal that closes the connection
  // is known before Node parses a request pipelined behind it (never served: OwedResponses); with
  // an earlier request still undecided, the turns (turns.ts) keep that order.
  const admitted = admit(req, record, state);
  const turn = takeTurn(req.socket, res);
  try {
    if (turn && !(await turn)) return notServed(req, res, record);
    await judgeAndAct(req, res, record, state, metrics, admitted, onLongPoll);
  } finally {
    endTurn(res);
  }
}

/** Decides a request in its turn, then refuses, answers or forwards it. */
async function judgeAndAct(
  req: IncomingMessage,
  res: ServerResponse,
  record: AccessRecord,
  state: State,
  metrics: Metrics,
  admitted: Admitted,
  onLongPoll?: LongPollHook,
): Promise<void> {
  const judged =
    admitted.kind === 'route'
      ? await decide(admitted.route, req, record, state, metrics, (limit, ms) => readBody(req, res, limit, ms, record))
      : claiming(admitted, req, record, state);
  if (judged.kind === 'refuse') return deny(req, res, record, judged.reason, judged);
  if (judged.kind === 'answer')
    return respond(res, record, 'application/json; charset=utf-8', judged.body, judged.detail);
  // An NTLM Type 3 whose client left meanwhile never reaches Exchange.
  if (res.destroyed) return judged.settle?.(null);
  const { route, identity, settle, forms } = judged;
  const settings = state.config.services[route.service];
  if (!identity) boundHandshakeBody(req, res, record);
  metrics.forwarding(route.service, 1);
  onClose(res, () => metrics.forwarding(route.service, -1));
  const idleMs = identity ? requestIdleMs(route.service, settings, record.operation) : HANDSHAKE_IDLE_MS;
  if (idleMs > LONG_POLL_MS) onLongPoll?.(res);
  forward(
    req,
    res,
    record,
    {
      service: route.service,
      host: route.host,
      settings,
      idleMs,
      frontEnd: state.frontEnds[route.service],
      onStatus: settle,
      forms,
    },
    state.upstream,
  );
}

/**
 * The stages, in order; each fills in the record. `rpc`: an Outlook Anywhere request (the rpc
 * service by its method, wherever it points; rpc-tunnel.ts).
 */
export async function judge(
  req: Request,
  record: AccessRecord,
  state: State,
  metrics?: Metrics,
  rpc = false,
): Promise<Judged> {
  const admitted = rpc ? admitRpc(req, record, state) : admit(req, record, state);
  if (admitted.kind !== 'route') return claiming(admitted, req, record, state);
  return decide(admitted.route, req, record, state, metrics);
}

/**
 * After admission: the service's front-end authenticates, the policy authorizes. `readBody`: the
 * request's body, for a front-end that reads one (the forms sign-in); absent for a tunnel head.
 */
async function decide(
  route: Route,
  req: Request,
  record: AccessRecord,
  state: State,
  metrics?: Metrics,
  readBody?: FrontEndRequest['readBody'],
): Promise<Judged> {
  const frontEnd = state.frontEnds[route.service];
  const started = performance.now();
  const auth = await frontEnd.authenticate(frontEndRequest(req, route, readBody), state);
  metrics?.authDuration.observe({ cache: auth.cache ?? 'none' }, (performance.now() - started) / 1000);
  record.user = (auth.ok ? auth.identity?.user : auth.user) || null;
  record.cache = auth.cache;
  if (!auth.ok)
    return claiming(
      {
        kind: 'refuse',
        reason: auth.reason,
        challenges: frontEnd.challenges,
        detail: auth.detail,
        status: auth.status,
        page: auth.page,
      },
      req,
      record,
      state,
    );
  const settle = 'onStatus' in auth ? ntlmVerdict(record, auth.onStatus) : undefined;
  if (auth.forms?.service) record.service = auth.forms.service; // a sign-in is logged for its destination
  const refused = authorized(req, record, auth.forms?.service ?? route.service, auth, state);
  if (refused) {
    settle?.(null); // an NTLM Type 3 refused here never reaches Exchange
    return refused.kind === 'refuse' && auth.forms?.refused ? { ...refused, page: auth.forms.refused() } : refused;
  }
  if (auth.forms?.detail) record.detail = auth.forms.detail;
  auth.forms?.allowed?.();
  return { kind: 'allow', route, identity: auth.identity, settle, forms: auth.forms };
}

/**
 * The policy's decision for an authenticated identity; an NTLM negotiate leg (no identity yet)
 * passes with no big body. Null when the request may be forwarded.
 */
function authorized(
  req: Request,
  record: AccessRecord,
  service: Service,
  auth: Extract<FrontEndOutcome, { ok: true }>,
  state: State,
): Judged | null {
  if (auth.identity) {
    const decision = authorize(service, auth.identity, state.policy);
    record.rule = decision.rule;
    if (!decision.allow) return { kind: 'refuse', reason: decision.reason };
    record.reason = decision.reason;
  } else {
    if (
      Number(req.headers['content-length'] ?? 0) > HANDSHAKE_MAX_BODY ||
      req.headers['transfer-encoding'] !== undefined
    ) {
      return { kind: 'refuse', reason: 'too-large', detail: 'an NTLM handshake request carries no big body' };
    }
    record.reason = 'allowed';
    record.detail = 'detail' in auth ? auth.detail : null;
  }
  record.decision = 'allow';
  return null;
}
/**
 * An anonymous NTLM leg holds an upstream connection while its body arrives: it gets
 * HANDSHAKE_BODY_MS for the whole body (a byte every few seconds would pass any idle timeout).
 */
function boundHandshakeBody(req: IncomingMessage, res: ServerResponse, record: AccessRecord): void {
  if (req.complete) return;
  const timer = setTimeout(() => {
    if (!req.complete)
      deny(req, res, record, 'bad-request', { status: 408, detail: 'NTLM handshake body not received in time' });
  }, HANDSHAKE_BODY_MS);
  timer.unref();
  res.once('close', () => clearTimeout(timer));
}

/**
 * Exchange's answer to a forwarded NTLM Type 3 settles it; a 401 is Exchange refusing the proof
 * (a wrong password), logged as such although the request was forwarded: Exchange decided.
 */
function ntlmVerdict(
  record: AccessRecord,
  settle: ((status: number | null) => void) | undefined,
): ((status: number | null) => void) | undefined {
  if (!settle) return undefined;
  return (status) => {
    settle(status);
    if (status === 401)
      Object.assign(record, { decision: 'deny', reason: 'bad-credentials', detail: 'Exchange refused the NTLM logon' });
  };
}

/**
 * A request pipelined behind an answer that closes the connection: never judged, never forwarded. Node
 * never writes its response; the record says why when the connection closes (status 499).
 */
function notServed(req: IncomingMessage, res: ServerResponse, record: AccessRecord): void {
  res.shouldKeepAlive = false; // and the one after it is not served either
  // Node never closes a queued response it drops with its connection: close it, so it is logged.
  req.socket.once('close', () => {
    if (!res.closed) res.emit('close');
  });
  Object.assign(record, {
    decision: 'deny',
    reason: 'bad-request',
    detail: 'pipelined behind an answer that closes the connection (RFC 9112 §9.6)',
  });
}

/** A request allowed to stay silent longer than this counts as a long-poll. */
const LONG_POLL_MS = 300_000;
/** An NTLM handshake leg (no identity yet) may carry this much body, and wait this long. */
const HANDSHAKE_MAX_BODY = 64 * 1024;
const HANDSHAKE_IDLE_MS = 30_000;
const HANDSHAKE_BODY_MS = 10_000;

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
    writeRecord(out.access, record);
    out.metrics.observe(record);
  };
  onClose(res, () => {
    closed = true;
    write();
  });
  return {
    settled: () => {
      settled = true;
      write();
    },
  };
}
