/**
 * `listen.proxyProtocol`: a TCP listener in front of the TLS server. From an address in `from` a
 * PROXY header (v1 or v2) is required and its client becomes the connection's (client-address.ts);
 * from any other address a PROXY header is refused. Either way the rest goes to the TLS server
 * unchanged. Reading is bounded: the header's size limits, and a deadline of `timeoutMs`.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { Server as TlsServer } from 'node:tls';
import type { Config } from '../config/load.js';
import { AddressRanges } from './cidr.js';
import { setClientAddress } from './client-address.js';
import { parseProxyHeader, startsLikeProxy } from './proxy-protocol.js';

/** Why a connection was refused: `exgate_proxy_protocol_refused_total{reason}`. */
export type ProxyRefusal = 'not-listed' | 'missing' | 'malformed' | 'timeout';

export interface ProxyFrontOptions {
  /** The balancers' addresses (`listen.proxyProtocol.from`). */
  readonly from: AddressRanges;
  /** How long a connection may take to send its PROXY header (the TLS handshake timeout). */
  readonly timeoutMs: number;
  /** Called once per refused connection, before it is destroyed; never with a silent one. */
  readonly onRefused: (peer: string, reason: ProxyRefusal, detail: string) => void;
}

/** What listens for `tls`: itself, or with `listen.proxyProtocol` a PROXY protocol front for it. */
export function listenerFor(tls: TlsServer, config: Config, onRefused: ProxyFrontOptions['onRefused']): Server {
  const proxy = config.listen.proxyProtocol;
  if (proxy === undefined) return tls;
  const front = createProxyFront(tls, {
    from: new AddressRanges(proxy.from),
    timeoutMs: config.tls.handshakeTimeoutMs,
    onRefused,
  });
  // An http(s) server (holding.ts) starts its headers-timeout checks on 'listening' and stops them
  // on close (node:_http_server); it never listens itself here.
  front.once('listening', () => tls.emit('listening'));
  front.once('close', () => tls.close());
  return front;
}

/** The listener to listen on instead of `tls` itself. */
export function createProxyFront(tls: TlsServer, opts: ProxyFrontOptions): Server {
  return createServer((socket) => readHeader(socket, tls, opts));
}

function readHeader(socket: Socket, tls: TlsServer, opts: ProxyFrontOptions): void {
  const peer = socket.remoteAddress ?? '';
  const listed = opts.from.has(socket.remoteAddress);
  let buf: Buffer = Buffer.alloc(0);
  const stop = () => {
    clearTimeout(timer);
    socket.off('data', onData);
    socket.off('error', onError);
  };
  const refuse = (reason: ProxyRefusal, detail: string) => {
    stop();
    opts.onRefused(peer, reason, detail);
    socket.destroy();
  };
  const handOff = (rest: Buffer) => {
    stop();
    socket.pause();
    if (rest.length > 0) socket.unshift(rest); // the TLS socket reads these first (node:_tls_wrap initRead)
    tls.emit('connection', socket);
  };
  const onData = (chunk: Buffer) => {
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    if (!listed) {
      const looks = startsLikeProxy(buf);
      if (looks === 'no') return handOff(buf);
      if (looks === 'yes') refuse('not-listed', 'a PROXY header from an address not in listen.proxyProtocol.from');
      return;
    }
    const parsed = parseProxyHeader(buf);
    if (parsed.kind === 'more') return;
    if (parsed.kind === 'bad') return refuse(startsLikeProxy(buf) === 'no' ? 'missing' : 'malformed', parsed.why);
    if (parsed.source !== null) setClientAddress(socket, parsed.source.address);
    handOff(buf.subarray(parsed.length));
  };
  const onError = () => socket.destroy(); // a reset before the header: nothing to answer
  const timer = setTimeout(() => {
    // A peer that sent nothing (a balancer's TCP check, an idle scanner) is closed without a word.
    if (buf.length === 0) {
      stop();
      socket.destroy();
    } else refuse('timeout', `PROXY header incomplete after ${opts.timeoutMs} ms`);
  }, opts.timeoutMs);
  socket.on('data', onData);
  socket.on('error', onError);
  socket.once('close', () => clearTimeout(timer));
}
