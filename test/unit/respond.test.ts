/**
 * respond.ts, the one writer of refusals: the status each reason gets, and the same answer on a
 * parsed request (deny) and on a raw socket (refuseSocket): challenges, Retry-After, Connection.
 * Real sockets on loopback; the bytes the client reads are asserted.
 */
import { once } from 'node:events';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { newAccessRecord, type AccessRecord } from '../../src/pipeline/access-log.js';
import { DENY_STATUS, REASONS, type DenyReason } from '../../src/errors.js';
import { deny, refuseSocket, statusOf, type DenyOptions } from '../../src/pipeline/respond.js';

const closers: (() => void)[] = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
});

const DENY_REASONS = REASONS.filter((r): r is DenyReason => r !== 'allowed' && r !== 'report-only');

describe('statusOf', () => {
  it.each(DENY_REASONS)("%s answers with the catalogue's status", (reason) => {
    expect(statusOf(reason)).toBe(DENY_STATUS[reason]);
  });
  it.each([
    ['bad-request', 431, 431],
    ['bad-request', 505, 505],
    ['gateway-lockout', 429, 429],
    ['gateway-lockout', 503, 503],
    ['not-allowed', 500, 403],
    ['bad-credentials', 200, 401],
    ['too-large', 400, 413],
  ] as const)(
    "%s with a stage's status %s answers %s (only bad-request and gateway-lockout are refined)",
    (reason, status, expected) => {
      expect(statusOf(reason, { status })).toBe(expected);
    },
  );
});

/** What a client reads when the server side of a loopback connection is refused raw. */
async function rawRefusal(
  reason: DenyReason,
  opts: DenyOptions & { keepDecision?: boolean },
  record: AccessRecord,
): Promise<string> {
  const server = createServer((socket: Socket) => {
    refuseSocket(socket, record, reason, opts);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  closers.push(() => server.close());
  const client = connect((server.address() as AddressInfo).port, '127.0.0.1');
  const parts: Buffer[] = [];
  client.on('data', (d: Buffer) => parts.push(d));
  await once(client, 'close');
  return Buffer.concat(parts).toString('latin1');
}

const fresh = () => newAccessRecord({ remoteAddress: '127.0.0.1' } as Socket, { headers: {} });

describe('refuseSocket', () => {
  it("answers a 401 with the front-end's challenges, then closes", async () => {
    const record = fresh();
    const reply = await rawRefusal(
      'bad-credentials',
      { challenges: ['NTLM', 'Basic realm="mail"'], detail: 'x' },
      record,
    );
    expect(reply).toBe(
      'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: NTLM\r\nWWW-Authenticate: Basic realm="mail"\r\n' +
        'Content-Length: 0\r\nConnection: close\r\n\r\n',
    );
    expect(record).toMatchObject({ decision: 'deny', reason: 'bad-credentials', status: 401, detail: 'x' });
  });
  it.each([
    ['directory-unavailable', {}, 'HTTP/1.1 503 Service Unavailable\r\nRetry-After: 10\r\n'],
    ['gateway-lockout', { status: 429 }, 'HTTP/1.1 429 Too Many Requests\r\nRetry-After: 10\r\n'],
    ['gateway-lockout', { status: 503 }, 'HTTP/1.1 503 Service Unavailable\r\nRetry-After: 10\r\n'],
    ['bad-request', { status: 431 }, 'HTTP/1.1 431 Request Header Fields Too Large\r\n'],
    ['denied-by-rule', {}, 'HTTP/1.1 403 Forbidden\r\n'],
  ] as const)('%s %j starts %j', async (reason, opts, start) => {
    const reply = await rawRefusal(reason, opts, fresh());
    expect(reply.startsWith(start)).toBe(true);
    expect(reply.endsWith('Content-Length: 0\r\nConnection: close\r\n\r\n')).toBe(true);
  });
  it("keeps an allowed record's decision when Exchange failed (502)", async () => {
    const record = fresh();
    record.decision = 'allow';
    const reply = await rawRefusal('upstream-error', { keepDecision: true }, record);
    expect(reply.startsWith('HTTP/1.1 502 Bad Gateway\r\n')).toBe(true);
    expect(record).toMatchObject({ decision: 'allow', reason: 'upstream-error', status: 502 });
  });
});

describe('deny on a parsed request', () => {
  async function served(
    handler: (req: IncomingMessage, res: ServerResponse) => void,
    request: string,
  ): Promise<string> {
    const server = createHttpServer(handler);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    closers.push(() => {
      server.closeAllConnections();
      server.close();
    });
    const client = connect((server.address() as AddressInfo).port, '127.0.0.1');
    const parts: Buffer[] = [];
    client.on('data', (d: Buffer) => parts.push(d));
    client.write(request);
    await new Promise((r) => setTimeout(r, 300));
    client.destroy();
    return Buffer.concat(parts).toString('latin1');
  }
  const refuse =
    (reason: DenyReason, opts: DenyOptions = {}) =>
    (req: IncomingMessage, res: ServerResponse) => {
      deny(req, res, newAccessRecord(req.socket, req), reason, opts);
    };

  it("gives the same status and headers as the raw refusal, and keeps a body-less request's connection", async () => {
    const reply = await served(
      refuse('bad-credentials', { challenges: ['Basic realm="mail"'] }),
      'GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n',
    );
    expect([...reply.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => m[1])).toEqual(['401', '401']);
    expect(reply).toContain('WWW-Authenticate: Basic realm="mail"');
    expect(reply).not.toMatch(/connection: close/i);
  });
  it('closes after a refusal that leaves the connection untrustworthy (400, 421, 413, 5xx)', async () => {
    for (const reason of ['bad-request', 'misdirected', 'too-large', 'directory-unavailable'] as const) {
      const reply = await served(refuse(reason), 'GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n');
      expect([...reply.matchAll(/HTTP\/1\.1 (\d{3})/g)]).toHaveLength(1);
      expect(reply).toMatch(/connection: close/i);
    }
  });
  it('reads and drops a small body sent after the refusal, then serves the next request', async () => {
    const reply = await served(
      refuse('no-credentials'),
      'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n',
    );
    expect([...reply.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => m[1])).toEqual(['401', '401']);
  });
});
