/**
 * An Outlook Anywhere request head, read strictly (the RPC methods, one visible target, `name:
 * value` lines with no obs-fold or controls), and re-sent to Exchange with the framing the gateway
 * judged: Host, exactly one Content-Length and the Authorization it verified, whatever `Connection` names.
 */
import type { Socket } from 'node:net';
import { connectionTokens, dropsRequestHeader } from '../pipeline/headers.js';
import { RPC_METHODS } from '../pipeline/services.js';
import { withoutSessionCookie } from '../state/sessions.js';
import { clientAddress } from '../runtime/client-address.js';

/** A parsed RPC request head. */
export interface RpcHead {
  readonly method: string;
  readonly url: string;
  readonly version: string;
  readonly rawHeaders: string[];
  readonly headers: Record<string, string>;
}

/**
 * The head as sent to Exchange: the request line, the client's headers minus the hop-by-hop and
 * gateway-owned ones, then the framing the gateway judged and relays (Host, exactly one
 * Content-Length: the declared body, never more), the Authorization it verified, and
 * X-Forwarded-For / -Proto and X-Request-Id set by the gateway. No `Connection` token can remove any of these.
 */
export function rebuildHead(head: RpcHead, length: number, client: Socket, requestId: string): string {
  let out = `${head.method} ${head.url} ${head.version}\r\n`;
  const named = connectionTokens(head.headers.connection);
  for (let i = 0; i < head.rawHeaders.length; i += 2) {
    const name = head.rawHeaders[i] as string;
    const lower = name.toLowerCase();
    if (FRAMED.has(lower) || dropsRequestHeader(lower, named)) continue;
    const value = lower === 'cookie' ? withoutSessionCookie(head.rawHeaders[i + 1] as string) : head.rawHeaders[i + 1];
    if (value !== null) out += `${name}: ${value}\r\n`;
  }
  if (head.headers.host !== undefined) out += `Host: ${head.headers.host}\r\n`;
  out += `Content-Length: ${length}\r\n`;
  if (head.headers.authorization !== undefined) out += `Authorization: ${head.headers.authorization}\r\n`;
  out += `X-Request-Id: ${requestId}\r\n`;
  return `${out}X-Forwarded-For: ${clientAddress(client) ?? ''}\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n`;
}

/** Written by rebuildHead itself, from the values the gateway judged. */
const FRAMED: ReadonlySet<string> = new Set(['host', 'content-length', 'authorization', 'transfer-encoding']);

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const VISIBLE = /^[\x21-\x7e]+$/;

/** Parses a request head strictly: request line, then `name: value` lines (no obs-fold, no controls). */
export function parseHead(raw: Buffer): RpcHead | null {
  const lines = raw.toString('latin1').split('\r\n');
  const [method, url, version, extra] = (lines[0] ?? '').split(' ');
  if (
    !method ||
    !RPC_METHODS.has(method) ||
    !url ||
    (version !== 'HTTP/1.1' && version !== 'HTTP/1.0') ||
    extra !== undefined
  )
    return null;
  if (!VISIBLE.test(url)) return null; // the whole target, query included
  const rawHeaders: string[] = [];
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) return null;
    const name = line.slice(0, colon);
    const value = line.slice(colon + 1).trim();
    if (!TOKEN.test(name) || /[\x00-\x08\x0a-\x1f\x7f]/.test(value)) return null;
    rawHeaders.push(name, value);
    const lower = name.toLowerCase();
    if (headers[lower] === undefined) headers[lower] = value;
  }
  return { method, url, version, rawHeaders, headers };
}
