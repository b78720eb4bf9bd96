/**
 * admit: what is decided about a request before any credentials (the head, the name and path, the
 * declared size, services denied to everyone, autodiscover.json), on the HTTP path and for an
 * Outlook Anywhere head alike; and the shapes of a request and of what the stages decide.
 */
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { activeSyncCommand, type AccessRecord } from './access-log.js';
import { authorizeAnonymous } from './authorize.js';
import { checkHead, type Head } from './check-head.js';
import { classify, type Route } from './classify.js';
import { rpcFraming, rpcPrecheck } from '../exchange/client-error.js';
import type { DenyReason } from '../errors.js';
import { claimedUser, type FormsStep } from '../auth/front-ends.js';
import type { DenyOptions } from './respond.js';
import { answerAutodiscoverJson, isAutodiscoverJson } from '../exchange/autodiscover.js';
import type { State } from '../runtime/state.js';
import type { Identity } from '../auth/authenticate.js';
import { sessionIdOf } from '../state/sessions.js';
import { headerLines } from './request-view.js';

/** A request as the stages read it: Node's parsed request, or the tunnel's own parse of an RPC head. */
export interface Request extends Head {
  readonly url?: string | undefined;
  readonly headers: Head['headers'] & {
    readonly authorization?: string | undefined;
    readonly 'content-length'?: string | undefined;
    readonly expect?: string | undefined;
    readonly 'content-type'?: string | undefined;
  };
  readonly socket: Socket;
}

/** What the stages decided: refused (with why), answered by the gateway, or allowed to Exchange. */
export type Judged =
  | ({ readonly kind: 'refuse'; readonly reason: DenyReason } & DenyOptions)
  | { readonly kind: 'answer'; readonly body: string; readonly detail: string }
  | {
      readonly kind: 'allow';
      readonly route: Route;
      /** null: an NTLM handshake leg, forwarded for Exchange's challenge. */
      readonly identity: Identity | null;
      /** NTLM: settles the Type 3 with Exchange's status (null: never forwarded). */
      readonly settle?: ((status: number | null) => void) | undefined;
      /** Forms: the sign-in form's body, cookies to add, Authorization to drop (front-ends.ts). */
      readonly forms?: FormsStep | undefined;
    };

export type Admitted = Exclude<Judged, { kind: 'allow' }> | { readonly kind: 'route'; readonly route: Route };

/**
 * What is decided before credentials: the head, the name and path (classify), the declared body
 * size, services denied to everyone, and autodiscover.json (answered by the gateway).
 */
export function admit(req: Request, record: AccessRecord, state: State): Admitted {
  const head = checkHead(req);
  if (head) return { kind: 'refuse', reason: head.reason, detail: head.detail, status: head.status };
  const route = classify((req.socket as TLSSocket).servername, req.headers.host, req.url ?? '', state.config.names);
  if (!route.ok) {
    if (route.reason === 'unknown-service') record.service = 'unknown';
    return { kind: 'refuse', reason: route.reason, detail: route.detail };
  }
  record.service = route.service;
  if (route.service === 'activesync') record.operation = activeSyncCommand(req.url ?? '');
  const { maxBodyBytes } = state.config.services[route.service];
  const length = req.headers['content-length'];
  if (maxBodyBytes > 0 && length !== undefined && Number(length) > maxBodyBytes) {
    return { kind: 'refuse', reason: 'too-large', detail: `limit ${maxBodyBytes} bytes` };
  }
  const refused = authorizeAnonymous(route.service, state.policy);
  if (refused) {
    record.rule = refused.rule;
    // A browser door closed to everyone closes its sessions too: they must not come back with it.
    if (route.service === 'owa' || route.service === 'ecp')
      state.sessions.endId(sessionIdOf(headerLines(req.rawHeaders, 'cookie')), route.service);
    return { kind: 'refuse', reason: refused.reason };
  }
  // Anonymous by design, never forwarded: see autodiscover.ts.
  if (route.service === 'autodiscover' && isAutodiscoverJson(route.path)) {
    const answer = answerAutodiscoverJson(req, route.path, req.url ?? '', state.realm);
    if (answer.kind === 'refuse')
      return { kind: 'refuse', reason: 'bad-request', detail: answer.detail, status: answer.status };
    return { kind: 'answer', body: answer.body, detail: 'autodiscover.json answered by the gateway' };
  }
  return { kind: 'route', route };
}

/** admit() for an Outlook Anywhere request: the head (the RPC methods were matched already), then rpcPrecheck. */
export function admitRpc(req: Request, record: AccessRecord, state: State): Admitted {
  const head = checkHead({ ...req, method: 'POST' });
  if (head) return { kind: 'refuse', reason: head.reason, detail: head.detail, status: head.status };
  const framing = rpcFraming(req.rawHeaders, req.headers);
  if (framing) return { kind: 'refuse', reason: framing[1], detail: framing[2], status: framing[0] };
  const early = rpcPrecheck(
    (req.socket as TLSSocket).servername,
    { method: req.method ?? '', url: req.url ?? '', headers: req.headers },
    state,
    record,
  );
  if (early) return { kind: 'refuse', reason: early[1], detail: early[2], status: early[0] };
  return {
    kind: 'route',
    route: { ok: true, service: 'rpc', host: req.headers.host ?? '', path: record.path ?? '/rpc/' },
  };
}

/** A refusal before authentication still names the account the request claimed. */
export function claiming(
  judged: Exclude<Admitted, { kind: 'route' }>,
  req: Request,
  record: AccessRecord,
  state: State,
): Judged {
  if (judged.kind === 'refuse' && record.user === null) record.user = claimedUser(req.headers.authorization, state);
  return judged;
}
