/**
 * A TCP relay the tests can break: put it between the gateway and the DC (or Exchange) to make
 * the far side "go down" without stopping a server other tests share.
 *   - `refuse()`: stop listening and reset every connection (a dead DC: ECONNREFUSED)
 *   - `blackhole()`: accept connections but never answer (a DC that hangs)
 *   - `restore()`: relay again
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface TcpRelay {
  readonly port: number;
  refuse(): Promise<void>;
  blackhole(): Promise<void>;
  restore(): Promise<void>;
  close(): Promise<void>;
}

export async function startTcpRelay(targetPort: number, targetHost = '127.0.0.1'): Promise<TcpRelay> {
  let mode: 'relay' | 'blackhole' = 'relay';
  const sockets = new Set<Socket>();
  const track = (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
    s.on('error', () => {});
  };
  const onConnection = (client: Socket) => {
    track(client);
    if (mode === 'blackhole') return;
    const upstream = connect(targetPort, targetHost);
    track(upstream);
    client.pipe(upstream).pipe(client);
    client.once('close', () => upstream.destroy());
    upstream.once('close', () => client.destroy());
  };
  let server: Server = createServer(onConnection);
  const listen = (port: number) =>
    new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve((server.address() as { port: number }).port));
    });
  const port = await listen(0);
  const stop = async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  };
  return {
    port,
    refuse: stop,
    blackhole: async () => {
      for (const s of sockets) s.destroy();
      mode = 'blackhole';
    },
    restore: async () => {
      mode = 'relay';
      if (!server.listening) {
        server = createServer(onConnection);
        await listen(port);
      }
    },
    close: async () => {
      if (server.listening) await stop();
      else for (const s of sockets) s.destroy();
    },
  };
}
