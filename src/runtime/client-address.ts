/**
 * The client's address for every purpose (lockout source, tunnel counts, access log, X-Forwarded-For):
 * the one a PROXY protocol header named (proxy-front.ts), else the peer's. Read it only through
 * clientAddress(): behind a layer-4 balancer `remoteAddress` is the balancer.
 */
import type { Socket } from 'node:net';

const CLIENT = Symbol('exgate.client-address');

interface Tagged {
  [CLIENT]?: string;
  /** Node's TLSSocket keeps the TCP socket it wraps here (node:_tls_wrap, since Node 0.11). */
  _parent?: Tagged | null;
  remoteAddress?: string | undefined;
}

/** Records the address a PROXY header named, on the TCP socket, before TLS wraps it. */
export function setClientAddress(socket: Socket, address: string): void {
  (socket as unknown as Tagged)[CLIENT] = address;
}

/** The client's address: the PROXY header's, else the peer's (`remoteAddress`). */
export function clientAddress(socket: Socket): string | undefined {
  const s = socket as unknown as Tagged;
  return s[CLIENT] ?? s._parent?.[CLIENT] ?? s.remoteAddress;
}
