/**
 * forward.ts without a directory: a real client, a real HTTP server that forwards every request,
 * and a real upstream on loopback. Bodies stream byte for byte both ways, Exchange's internal
 * headers and the challenges a front-end does not take are dropped, the gateway's forwarding
 * headers are set, a client that leaves aborts the upstream request, an unreachable one is 502.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { newAccessRecord, type AccessRecord } from '../../src/pipeline/access-log.js';
import { forward } from '../../src/upstream/forward.js';
import { frontEndFor } from '../../src/auth/front-ends.js';
import { SERVICE_DEFAULTS } from '../../src/pipeline/services.js';
import { Upstream } from '../../src/upstream/upstream.js';

const servers: Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    s.close();
  }
});

async function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<number> {
  const server = createServer(handler);
  servers.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

/** A gateway that forwards everything to `upstreamPort`; resolves each record when its response closes. */
async function gateway(
  upstreamPort: number,
  mode: 'basic' | 'ntlm' = 'basic',
): Promise<{ port: number; records: AccessRecord[] }> {
  const url = new URL(`http://127.0.0.1:${upstreamPort}`);
  const upstream = new Upstream(
    {
      url,
      origin: url.origin,
      ca: undefined,
      servername: '127.0.0.1',
      servers: [{ url, origin: url.origin, key: url.host, servername: '127.0.0.1' }],
      healthCheck: null,
      insecureSkipVerify: false,
      allowPlaintext: false,
      connectTimeoutMs: 2000,
    },
    10_000,
  );
  const records: AccessRecord[] = [];
  const port = await listen((req, res) => {
    const record = newAccessRecord(req.socket, req);
    record.decision = 'allow'; // as the pipeline leaves it
    res.once('close', () => records.push(record));
    forward(
      req,
      res,
      record,
      {
        service: 'ews',
        host: 'mail.lab.test',
        settings: SERVICE_DEFAULTS.ews,
        idleMs: 5000,
        frontEnd: frontEndFor(mode, 'mail'),
      },
      upstream,
    );
  });
  return { port, records };
}

function call(
  port: number,
  method: string,
  path: string,
  body?: Buffer,
): Promise<{ status: number; headers: IncomingMessage['headers']; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, method, path, headers: { host: 'mail.lab.test', 'x-forwarded-for': '10.9.9.9' } },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

describe('forward', () => {
  it("streams a 4 MiB body each way byte for byte, with the gateway's forwarding headers", async () => {
    const seen: IncomingMessage['headers'][] = [];
    const up = await listen((req, res) => {
      seen.push(req.headers);
      const hash = createHash('sha256');
      req.on('data', (d: Buffer) => hash.update(d));
      req.on('end', () => res.end(Buffer.concat([Buffer.from(hash.digest('hex')), Buffer.alloc(4 * 1024 * 1024, 7)])));
    });
    const { port, records } = await gateway(up);
    const body = Buffer.alloc(4 * 1024 * 1024, 3);
    const reply = await call(port, 'POST', '/EWS/Exchange.asmx', body);
    expect(reply.status).toBe(200);
    expect(reply.body.subarray(0, 64).toString()).toBe(createHash('sha256').update(body).digest('hex'));
    expect(reply.body.length).toBe(64 + 4 * 1024 * 1024);
    expect(seen[0]).toMatchObject({
      host: 'mail.lab.test',
      'x-forwarded-for': '127.0.0.1',
      'x-forwarded-proto': 'https',
    });
    await expect.poll(() => records[0]?.bytesIn).toBe(body.length);
  });

  it("drops Exchange's internal headers and the challenges the front-end does not take, keeping the rest in order", async () => {
    const up = await listen((_req, res) => {
      res.writeHead(
        401,
        [
          ['X-FEServer', 'EX1'],
          ['X-BEServer', 'EX2'],
          ['WWW-Authenticate', 'Negotiate'],
          ['WWW-Authenticate', 'NTLM'],
          ['WWW-Authenticate', 'Basic realm="ex"'],
          ['X-Keep', 'yes'],
        ].flat(),
      );
      res.end();
    });
    const basic = await gateway(up, 'basic');
    const b = await call(basic.port, 'GET', '/ews/');
    expect(b.status).toBe(401);
    expect(b.headers['www-authenticate']).toBe('Basic realm="ex"');
    expect(b.headers['x-feserver']).toBeUndefined();
    expect(b.headers['x-keep']).toBe('yes');
    const ntlm = await gateway(up, 'ntlm');
    expect((await call(ntlm.port, 'GET', '/ews/')).headers['www-authenticate']).toBe('NTLM');
  });

  it('answers 502 upstream-error when Exchange cannot be reached, keeping the allow decision', async () => {
    const closed = await listen(() => {});
    servers.pop()?.close();
    const { port, records } = await gateway(closed);
    const reply = await call(port, 'GET', '/ews/');
    expect(reply.status).toBe(502);
    await expect.poll(() => records[0]?.reason).toBe('upstream-error');
    expect(records[0]?.decision).toBe('allow');
  });

  it('aborts the upstream request when the client leaves', async () => {
    let upstreamClosed = false;
    const up = await listen((req) => {
      req.socket.once('close', () => {
        upstreamClosed = true;
      });
    }); // never answers
    const { port } = await gateway(up);
    const req = request({ host: '127.0.0.1', port, path: '/ews/', headers: { host: 'mail.lab.test' } });
    req.on('error', () => {});
    req.end();
    await new Promise((r) => setTimeout(r, 200));
    req.destroy();
    await expect.poll(() => upstreamClosed, { timeout: 3000 }).toBe(true);
  });
});
