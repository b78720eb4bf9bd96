/**
 * The floor of a Node proxy built like the gateway (issue 16): the same TLS server feeding Node's
 * HTTP server, one undici Client per client socket, dispatch() with the response corked for a
 * tick, and nothing else: no auth, no policy, no access log, no metrics. Its own process:
 *   node .bench/bench/bare-forwarder.js --cert FILE --key FILE --upstream PORT [--pool]   → prints {"port":N}
 * `--pool`: one shared undici Pool instead of a Client per socket, to price the gateway's pinning.
 */
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { parseArgs } from 'node:util';
import { Client, type Dispatcher, Pool } from 'undici';

const { values } = parseArgs({
  options: {
    cert: { type: 'string' },
    key: { type: 'string' },
    upstream: { type: 'string' },
    pool: { type: 'boolean', default: false },
  },
  strict: true,
});
const origin = `http://127.0.0.1:${Number(values.upstream)}`;
/** RFC 9110 §7.6.1: never forwarded either way. */
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

function requestHeaders(req: IncomingMessage): string[] {
  const out: string[] = [];
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    if (!HOP.has(raw[i]!.toLowerCase())) out.push(raw[i]!, raw[i + 1]!);
  }
  out.push('x-forwarded-for', req.socket.remoteAddress ?? '', 'x-forwarded-proto', 'https');
  return out;
}

/** Relays one upstream response: head, then body with backpressure, corked for one tick. */
class Relay implements Dispatcher.DispatchHandler {
  constructor(private readonly res: ServerResponse) {}

  /** Present so that undici takes this for its controller-based handler API, as the gateway's relay. */
  onRequestStart(): void {}

  onResponseStart(controller: Dispatcher.DispatchController, status: number, _h: unknown, message?: string): void {
    if (status < 200) return;
    const raw = (controller.rawHeaders ?? []) as Buffer[];
    const headers: string[] = [];
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!.toString('latin1');
      if (!HOP.has(name.toLowerCase())) headers.push(name, raw[i + 1]!.toString('latin1'));
    }
    this.res.writeHead(status, message || undefined, headers);
    this.res.cork();
    process.nextTick(() => this.res.writableCorked > 0 && this.res.uncork());
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.res.write(chunk)) {
      controller.pause();
      this.res.once('drain', () => controller.resume());
    }
  }

  onResponseEnd(): void {
    this.res.end();
  }

  onResponseError(_controller: Dispatcher.DispatchController, _err: Error): void {
    if (!this.res.headersSent) this.res.writeHead(502, { 'content-length': '0' });
    this.res.end();
  }
}

const clients = new WeakMap<Socket, Client>();
const shared = values.pool ? new Pool(origin, { pipelining: 1, keepAliveTimeout: 300_000 }) : null;
function clientFor(socket: Socket): Dispatcher {
  if (shared) return shared;
  let c = clients.get(socket);
  if (!c) {
    const client = new Client(origin, { pipelining: 1, keepAliveTimeout: 300_000, keepAliveMaxTimeout: 300_000 });
    client.on('connectionError', () => {});
    socket.once('close', () => void client.destroy().catch(() => {}));
    clients.set(socket, client);
    c = client;
  }
  return c;
}

const http = createHttpServer({ requestTimeout: 0, keepAliveTimeout: 300_000 }, (req, res) => {
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  clientFor(req.socket).dispatch(
    {
      origin,
      path: req.url ?? '/',
      method: req.method ?? 'GET',
      headers: requestHeaders(req),
      body: hasBody ? req : null,
    } as Dispatcher.DispatchOptions,
    new Relay(res),
  );
});
http.emit('listening');
const tls = createTlsServer(
  { cert: readFileSync(values.cert!), key: readFileSync(values.key!), ALPNProtocols: ['http/1.1'] },
  (socket) => http.emit('connection', socket),
);
tls.on('tlsClientError', (_err, socket) => socket.destroy());
tls.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () => {
  process.stdout.write(`${JSON.stringify({ port: (tls.address() as AddressInfo).port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
