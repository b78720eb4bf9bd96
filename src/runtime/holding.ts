/**
 * While the directory is down at startup the policy cannot be compiled (its groups are looked up
 * in AD), so there is no gateway yet. Rather than leave the port closed (clients would see
 * "connection refused", load balancers a dead node), the port answers every request with 503
 * and `Retry-After`, logged like any refusal (`directory-unavailable`). Nothing is forwarded:
 * there is nothing to forward with. serve.ts closes it just before the gateway listens.
 */
import { createServer, type Server } from 'node:https';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { newAccessRecord, writeRecord } from '../pipeline/access-log.js';
import type { Config } from '../config/load.js';
import { deny } from '../pipeline/respond.js';
import { listenerFor } from './proxy-front.js';
import { cutFailedHandshakes, secureContextOptions, type TlsMaterial } from './tls.js';

export interface Holding {
  /** Stops accepting at once; answers already started still go out. */
  close(): Promise<void>;
}

/** Listens on the gateway's port and answers 503 until closed. */
export async function holdWith503(
  config: Config,
  material: TlsMaterial,
  access: Logger,
  listen: { port: number; host: string },
): Promise<Holding> {
  const sockets = new Set<Socket>();
  const server: Server = createServer(
    {
      ...secureContextOptions(material, config.tls),
      ALPNProtocols: ['http/1.1'],
      handshakeTimeout: config.tls.handshakeTimeoutMs,
    },
    (req, res) => {
      const record = newAccessRecord(req.socket, req);
      res.shouldKeepAlive = false;
      deny(req, res, record, 'directory-unavailable', { detail: 'starting: the directory has not answered yet' });
      res.once('close', () => {
        record.status = res.statusCode;
        record.durationMs = Date.now() - Date.parse(record.time);
        writeRecord(access, record);
      });
      req.resume(); // a body is read and dropped, never kept
    },
  );
  server.headersTimeout = config.http.headersTimeoutMs;
  server.requestTimeout = config.http.headersTimeoutMs;
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  // https.Server cuts a failed handshake itself only while nobody listens for clientError.
  cutFailedHandshakes(server);
  // Behind a balancer that sends PROXY headers, the header is read and dropped here too.
  const listener = listenerFor(server, config, () => {});
  await new Promise<void>((resolve, reject) => {
    listener.once('error', reject);
    listener.listen({ port: listen.port, host: listen.host, backlog: 4096 }, () => resolve());
  });
  return {
    close: () =>
      new Promise<void>((resolve) => {
        listener.close(() => resolve());
        server.closeIdleConnections();
        setTimeout(() => {
          for (const s of sockets) s.destroy();
        }, 1000).unref();
      }),
  };
}
