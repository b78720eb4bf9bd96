/**
 * Small HTTP helpers of the stand-in's forms sign-in (./owa-forms.ts): the request's origin, cookies and
 * form, and answers that are never cached or framed, as Exchange sends its sign-in pages.
 */
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';

/** Headers of every forms answer: never cached (so the back button asks again), never framed (A1). */
export const NO_STORE = { 'Cache-Control': 'no-cache, no-store', Pragma: 'no-cache', 'X-Frame-Options': 'SAMEORIGIN' };

/** isTls says whether the request came over HTTPS (cookies are then Secure, as Exchange sets them). */
export function isTls(req: IncomingMessage): boolean {
  return (req.socket as Partial<TLSSocket>).encrypted === true;
}

/** The request's own scheme and Host. Exchange forces https; the stand-in keeps its own scheme to work over HTTP. */
export function origin(req: IncomingMessage): string {
  // Behind a gateway that terminates TLS (the demo), the browser still speaks https: Exchange builds
  // its sign-in URLs with https whatever it was reached by (research A1).
  const https = isTls(req) || req.headers['x-forwarded-proto'] === 'https';
  return `${https ? 'https' : 'http'}://${req.headers.host ?? 'localhost'}`;
}

/** onOwnHost: `destination` is an absolute URL on the request's own Host (Exchange's check, A2). */
export function onOwnHost(destination: string, req: IncomingMessage): boolean {
  try {
    const url = new URL(destination);
    return url.host.toLowerCase() === (req.headers.host ?? '').toLowerCase();
  } catch {
    return false;
  }
}

/** The lower-cased path of an absolute URL, undefined when it is not one. */
export function destinationPath(destination: string): string | undefined {
  try {
    return new URL(destination).pathname.toLowerCase();
  } catch {
    return undefined;
  }
}

/** readForm parses an application/x-www-form-urlencoded body (the page sends isUtf8=1). */
export function readForm(body: Buffer): URLSearchParams {
  return new URLSearchParams(body.toString('utf8'));
}

/** cookies reads Cookie headers into name → value; the first of a repeated name wins. */
export function cookies(header: string | string[] | undefined): Map<string, string> {
  const jar = new Map<string, string>();
  for (const line of Array.isArray(header) ? header : [header ?? '']) {
    for (const pair of line.split(';')) {
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      if (eq > 0 && !jar.has(name)) jar.set(name, pair.slice(eq + 1).trim());
    }
  }
  return jar;
}

/** redirect answers 302 to `location` with these Set-Cookie values. */
export function redirect(res: ServerResponse, location: string, setCookie: string[]): void {
  reply(res, 302, 'text/html; charset=utf-8', '', { Location: location, 'Set-Cookie': setCookie, ...NO_STORE });
}

/** html answers an HTML page. */
export function html(res: ServerResponse, status: number, body: string, extra: OutgoingHttpHeaders = {}): void {
  reply(res, status, 'text/html; charset=utf-8', body, { ...NO_STORE, ...extra });
}

/** reply answers with a complete body and its Content-Length. */
export function reply(
  res: ServerResponse,
  status: number,
  type: string,
  body: string | Buffer,
  extra: OutgoingHttpHeaders = {},
): void {
  res.writeHead(status, { ...extra, 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}
