/**
 * An Outlook Anywhere end point for tests: a raw TLS server that speaks just enough RPC over
 * HTTP (MS-RPCH) to count bytes. Node's HTTP server cannot parse RPC_IN_DATA, so this reads the
 * head itself.
 *   RPC_IN_DATA: counts body bytes until `inBytes` arrived, then answers 200 and closes.
 *   RPC_OUT_DATA: answers 200 and streams `outBytes` bytes.
 * Anything else gets 200 "hello" (the gateway's normal path).
 */
import { createServer, type Server, type TLSSocket } from 'node:tls';

export interface RpcUpstream {
  readonly url: string;
  readonly port: number;
  /** Heads seen (request line + headers, Authorization redacted), and body bytes per channel. */
  readonly seen: { head: string; bodyBytes: number }[];
  close(): Promise<void>;
}

export async function startRpcUpstream(
  tls: { cert: string; key: string },
  inBytes: number,
  outBytes: number,
): Promise<RpcUpstream> {
  const seen: { head: string; bodyBytes: number }[] = [];
  const sockets = new Set<TLSSocket>();
  const server: Server = createServer({ ...tls, ALPNProtocols: ['http/1.1'] }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let buf = Buffer.alloc(0);
    let entry: { head: string; bodyBytes: number } | null = null;
    socket.on('data', (d: Buffer) => {
      if (entry) {
        entry.bodyBytes += d.length;
        if (entry.bodyBytes >= inBytes) socket.end('HTTP/1.1 200 Success\r\nContent-Length: 0\r\n\r\n');
        return;
      }
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf
        .subarray(0, end)
        .toString('latin1')
        .replace(/(authorization:\s*)\S+\s+\S+/i, '$1[redacted]');
      entry = { head, bodyBytes: buf.length - end - 4 };
      seen.push(entry);
      const method = head.split(' ')[0];
      if (method === 'RPC_OUT_DATA') return streamOut(socket, outBytes);
      if (method !== 'RPC_IN_DATA')
        socket.end('HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as { port: number }).port;
  return {
    url: `https://127.0.0.1:${port}`,
    port,
    seen,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

function streamOut(socket: TLSSocket, total: number): void {
  socket.write('HTTP/1.1 200 Success\r\nContent-Type: application/rpc\r\nContent-Length: 1073741824\r\n\r\n');
  const chunk = Buffer.alloc(64 * 1024, 0x41);
  let sent = 0;
  const pump = () => {
    while (sent < total) {
      const n = Math.min(chunk.length, total - sent);
      sent += n;
      if (!socket.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return void socket.once('drain', pump);
    }
    socket.end();
  };
  pump();
}
