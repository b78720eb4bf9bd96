/**
 * The auth front-end seam: how a service's clients present credentials (`services.<name>.auth`).
 * A front-end authenticates a request, names the challenges of a refusal and the ones of Exchange
 * that may pass, and reads the account a request claims for the log. Implementations: front-ends.ts
 * (Basic, NTLM, both) and forms.ts (OWA and ECP's sign-in page with a gateway session).
 */
import type { Socket } from 'node:net';
import type { AuthOutcome, Authenticator } from './authenticate.js';
import type { LogonDomain } from './credentials.js';
import type { NtlmOutcome } from './ntlm-auth.js';
import type { Service } from '../pipeline/services.js';
import type { Upstream } from '../upstream/upstream.js';
import type { DenyReason } from '../errors.js';
import type { Sessions } from '../state/sessions.js';

/** What a front-end reads of the gateway's state. */
export interface FrontEndContext {
  readonly authenticator: Authenticator;
  readonly upstream: Upstream;
  readonly domain: LogonDomain;
  /** DNS names of the domain an NTLM Type 3 may carry instead of the NetBIOS name. */
  readonly dnsDomains: ReadonlySet<string>;
  readonly policy: { readonly groupDns: readonly string[]; readonly version: string };
  /** Browser sessions (forms). */
  readonly sessions: Sessions;
}

/** One request, as a front-end sees it. */
export interface FrontEndRequest {
  /** The Authorization header, when there is exactly one. */
  readonly header: string | undefined;
  /** The client connection: NTLM sessions and proven Basic headers live on it. */
  readonly socket: Socket;
  /** The normalized path and the raw query. */
  readonly path: string;
  readonly query: string;
  /** What forms reads besides: the method, Host, the raw request target, the `Cookie` lines. */
  readonly method: string;
  /** The Host header as sent, port included (checked by admit), or the SNI name when there is none. */
  readonly host: string;
  readonly url: string;
  readonly cookies: readonly string[];
  readonly contentType: string | undefined;
  /** Reads the whole body, at most `limit` bytes within `ms`; absent where no body can be read (the tunnel). */
  readonly readBody?: ((limit: number, ms: number) => Promise<Buffer | 'too-large' | 'aborted'>) | undefined;
}

/** A refusal answered as a browser expects it (forms): a redirect, Exchange's 440, or a page of the gateway. */
export interface BrowserPage {
  readonly status: number;
  readonly statusMessage?: string;
  readonly location?: string;
  readonly html?: string;
  readonly setCookie?: readonly string[];
}

/** What a forms step adds to forwarding and to a refusal by the policy. */
export interface FormsStep {
  /** The body already read (the sign-in form), forwarded byte for byte instead of the request stream. */
  readonly body?: Buffer;
  /** The service to authorize when it is not the request's own (the form's destination). */
  readonly service?: Service;
  /** What the access record's detail says of it (`sign-in form`, `sign-out`). */
  readonly detail?: string;
  /** The client's Authorization never reaches Exchange: the cookies say who the browser is. */
  readonly dropAuthorization?: boolean;
  /** The policy allowed the request (a sign-out ends its session here, before Exchange answers). */
  readonly allowed?: () => void;
  /** The policy refused the request: how to answer it. */
  readonly refused?: () => BrowserPage;
  /** Exchange's answer started: the Set-Cookie values the gateway adds (null: Exchange refused the form). */
  readonly answered?: (status: number, setCookies: readonly string[]) => readonly string[] | null;
}

/** A forms refusal before any credentials were checked. */
export interface FormsRefusal {
  readonly ok: false;
  readonly reason: Extract<DenyReason, 'no-session' | 'bad-request' | 'too-large'>;
  readonly user: null;
  readonly cache: null;
  readonly detail: string;
  readonly status?: number;
}

/**
 * An identity; a leg to forward with no identity (an NTLM handshake, the sign-in page); or a refusal
 * with its reason. Forms adds its step, and a refusal its browser page.
 */
export type FrontEndOutcome = (AuthOutcome | NtlmOutcome | FormsRefusal) & {
  readonly forms?: FormsStep;
  readonly page?: BrowserPage;
};

export interface AuthFrontEnd {
  authenticate(req: FrontEndRequest, ctx: FrontEndContext): Promise<FrontEndOutcome>;
  /** The challenges the gateway's own 401 offers. */
  readonly challenges: readonly string[];
  /** Whether one of Exchange's `WWW-Authenticate` values may reach this service's clients. */
  passes(challenge: string): boolean;
  /** The account the credentials name, never verified: for the record of a refusal. */
  claimedUser(header: string | undefined, ctx: Pick<FrontEndContext, 'domain' | 'dnsDomains'>): string | null;
}
