/**
 * A raw TLS listener standing in for Exchange in framing tests: it records every byte each
 * connection delivered and reads them as a strict HTTP/1.1 server would (Content-Length or
 * chunked, nothing else), answering each request `200 ok`. What it parsed is what Exchange would
 * have served: a request the gateway never judged shows up here.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, type Server, type TLSSocket } from 'node:tls';
import { makeCert } from './gateway-harness.js';

export interface RawRequest {
  readonly method: string;
  readonly target: string;
  readonly headers: readonly (readonly [string, string])[];
  readonly body: Buffer;
}

export interface RawExchange {
  readonly url: string;
  /** Every request parsed so far, in arrival order. */
  readonly requests: RawRequest[];
  /** All bytes received, per connection. */
  readonly connections: Buffer[];
  /** `METHOD target` of each request parsed so far. */
  lines(): string[];
  /** Connections from the gateway open now. */
  open(): number;
  reset(): void;
  close(): Promise<void>;
}

export async function startRawExchange(tls: { cert: string; key: string }): Promise<RawExchange> {
  const requests: RawRequest[] = [];
  const connections: Buffer[] = [];
  const sockets = new Set<TLSSocket>();
  const server: Server = createServer({ ...tls, ALPNProtocols: ['http/1.1'] }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    const index = connections.push(Buffer.alloc(0)) - 1;
    let buf = Buffer.alloc(0);
    socket.on('data', (d: Buffer) => {
      connections[index] = Buffer.concat([connections[index] as Buffer, d]);
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const taken = takeRequest(buf);
        if (taken === null) return;
        if (taken === 'bad') {
          socket.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
          return;
        }
        requests.push(taken.request);
        buf = buf.subarray(taken.used);
        socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as { port: number };
  return {
    url: `https://127.0.0.1:${port}`,
    requests,
    connections,
    lines: () => requests.map((r) => `${r.method} ${r.target}`),
    open: () => sockets.size,
    reset: () => {
      requests.length = 0;
      connections.length = 0;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** One whole request at the start of `buf`, null when more bytes are needed, 'bad' when unreadable. */
function takeRequest(buf: Buffer): { request: RawRequest; used: number } | null | 'bad' {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const [method, target] = (lines[0] ?? '').split(' ');
  if (!method || !target) return 'bad';
  const headers = lines.slice(1).map((l) => {
    const colon = l.indexOf(':');
    return [l.slice(0, colon).toLowerCase(), l.slice(colon + 1).trim()] as const;
  });
  const value = (name: string) => headers.filter(([n]) => n === name).map(([, v]) => v);
  const start = end + 4;
  const te = value('transfer-encoding');
  const cl = value('content-length');
  if (te.length > 0 && cl.length > 0) return 'bad';
  if (te.length > 0) {
    if (te.join(',').toLowerCase() !== 'chunked') return 'bad';
    return takeChunked(buf, start, { method, target, headers });
  }
  if (cl.length > 1 || (cl[0] !== undefined && !/^\d+$/.test(cl[0]))) return 'bad';
  const length = Number(cl[0] ?? 0);
  if (buf.length < start + length) return null;
  return { request: { method, target, headers, body: buf.subarray(start, start + length) }, used: start + length };
}

function takeChunked(
  buf: Buffer,
  at: number,
  head: Omit<RawRequest, 'body'>,
): { request: RawRequest; used: number } | null | 'bad' {
  const parts: Buffer[] = [];
  for (;;) {
    const lineEnd = buf.indexOf('\r\n', at);
    if (lineEnd < 0) return null;
    const size = parseInt(buf.subarray(at, lineEnd).toString('latin1').split(';')[0] as string, 16);
    if (Number.isNaN(size)) return 'bad';
    const dataStart = lineEnd + 2;
    if (size === 0) {
      const trailerEnd = buf.indexOf('\r\n', dataStart);
      if (trailerEnd < 0) return null;
      return { request: { ...head, body: Buffer.concat(parts) }, used: trailerEnd + 2 };
    }
    if (buf.length < dataStart + size + 2) return null;
    parts.push(buf.subarray(dataStart, dataStart + size));
    at = dataStart + size + 2;
  }
}

/** A raw Exchange with its own certificate, and the gateway's `upstream` section that trusts it. */
export async function startRawExchangeBehind(): Promise<{
  exchange: RawExchange;
  upstream: { url: string; ca: string; servername: string };
  close(): Promise<void>;
}> {
  const dir = mkdtempSync(join(tmpdir(), 'exgate-raw-'));
  const cert = makeCert(dir, 'raw', ['exchange-be.lab.test']);
  writeFileSync(join(dir, 'ca.pem'), cert.cert);
  const exchange = await startRawExchange(cert);
  return {
    exchange,
    upstream: { url: exchange.url, ca: join(dir, 'ca.pem'), servername: 'exchange-be.lab.test' },
    close: async () => {
      await exchange.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
