/**
 * What the stages read of a request beyond Node's parsed view: the raw header lines of one name, and
 * the request as an auth front-end sees it (front-end.ts).
 */
import type { Route } from './classify.js';
import type { Socket } from 'node:net';
import type { FrontEndRequest } from '../auth/front-end.js';

/** What frontEndRequest reads (admit.ts Request has it). */
interface Viewed {
  readonly method?: string | undefined;
  readonly url?: string | undefined;
  readonly headers: { readonly authorization?: string | undefined; readonly host?: string | undefined };
  readonly rawHeaders: readonly string[];
  readonly socket: Socket;
}

/**
 * The request as a front-end reads it. The cookies and the Content-Type are read from the raw lines
 * only when asked (the forms front-end does; Basic and NTLM, on the hot path, never do).
 */
export function frontEndRequest(req: Viewed, route: Route, readBody: FrontEndRequest['readBody']): FrontEndRequest {
  return {
    header: req.headers.authorization,
    socket: req.socket,
    path: route.path,
    query: queryOf(req.url ?? ''),
    method: req.method ?? 'GET',
    host: req.headers.host ?? route.host, // as sent (with its port): the URLs Exchange builds use it
    url: req.url ?? '/',
    get cookies() {
      return headerLines(req.rawHeaders, 'cookie');
    },
    // Exactly one Content-Type: with two, Exchange and the gateway could read the form differently.
    get contentType() {
      return oneOf(headerLines(req.rawHeaders, 'content-type'));
    },
    readBody,
  };
}

/** The values of every raw header line named `lower` (Node merges or drops repeats in `headers`). */
export function headerLines(raw: readonly string[], lower: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2)
    if ((raw[i] as string).toLowerCase() === lower) out.push(raw[i + 1] as string);
  return out;
}

function oneOf(lines: readonly string[]): string | undefined {
  return lines.length === 1 ? lines[0] : undefined;
}

function queryOf(url: string): string {
  const q = url.indexOf('?');
  return q < 0 ? '' : url.slice(q + 1);
}
