// Tests for client-error.ts: requests Node's HTTP parser refuses. failedHead is table-tested on raw
// chunks; handleClientError is driven by Node's real parser (a plain HTTP server on loopback port
// 0), so rawPacket and bytesParsed are exactly what Node reports, pipelining included.
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AccessRecord } from '../../src/pipeline/access-log.js';
import { nameTable } from '../../src/pipeline/classify.js';
import { failedHead, handleClientError, OwedResponses } from '../../src/exchange/client-error.js';
import type { Policy, Rule } from '../../src/policy/compile.js';
import type { Service } from '../../src/pipeline/services.js';
import type { State } from '../../src/runtime/state.js';

const EXTERNAL = 'mail.lab.test';
const AUTH = 'Authorization: Basic YWxpY2U6U2VjcmV0LXB3';
const SECRET = 'YWxpY2U6U2VjcmV0LXB3';

describe('failedHead: the head of the failing request, from the raw chunk', () => {
  const at = (raw: string, marker: string) => raw.indexOf(marker);
  it('reads the request line, Host and User-Agent of a lone request', () => {
    const raw = `POST /owa/x?token=1 HTTP/1.1\r\nHost: Mail.Lab.Test:443\r\n${AUTH}\r\nUser-Agent: curl/8\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n`;
    expect(failedHead(Buffer.from(raw), at(raw, 'Content-Length: 2\r\n\r\n'))).toEqual({
      method: 'POST',
      url: '/owa/x?token=1',
      headers: { host: 'Mail.Lab.Test:443', 'user-agent': 'curl/8' },
    });
  });

  it('skips earlier pipelined requests: the head starts after the last blank line before the failure', () => {
    const raw =
      'GET /a HTTP/1.1\r\nHost: first.example\r\nUser-Agent: one\r\n\r\n' +
      `RPC_IN_DATA /rpc/rpcproxy.dll?x:6001 HTTP/1.1\r\nHost: ${EXTERNAL}\r\nUser-Agent: MSRPC\r\n${AUTH}\r\n\r\n`;
    expect(failedHead(Buffer.from(raw), at(raw, 'RPC_IN_DATA') + 1)).toEqual({
      method: 'RPC_IN_DATA',
      url: '/rpc/rpcproxy.dll?x:6001',
      headers: { host: EXTERNAL, 'user-agent': 'MSRPC' },
    });
    // The failure exactly at the first byte of the second request.
    expect(failedHead(Buffer.from(raw), at(raw, 'RPC_IN_DATA'))?.method).toBe('RPC_IN_DATA');
  });

  it.each([
    // A chunk that starts inside the head (a 20 kB URL spans TLS records: only its tail is here).
    ['the tail of a long request line', `${'a'.repeat(300)} HTTP/1.1\r\nHost: ${EXTERNAL}\r\n\r\n`, 100],
    ['a header line', `Content-Length: 2\r\nContent-Length: 2\r\n\r\n`, 20],
    ['a header name with a space', `Bad Header: x\r\n\r\n`, 3],
    [
      'a body, past its first byte',
      `POST /owa/ HTTP/1.1\r\nHost: ${EXTERNAL}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n\r\n`,
      73,
    ],
    ['an empty chunk', '', 0],
    ['a request line without a version', 'GET /owa/\r\nHost: x\r\n\r\n', 3],
    ['a request line with two spaces', 'GET  /owa/ HTTP/1.1\r\nHost: x\r\n\r\n', 3],
    ['a target with a control byte', 'GET /owa/\x01 HTTP/1.1\r\nHost: x\r\n\r\n', 3],
  ])('is null when the chunk offers no request line there: %s', (_what, raw, failure) => {
    expect(failedHead(Buffer.from(raw, 'latin1'), failure)).toBeNull();
  });

  it('reads the head before a body that fails at its first byte (chunk size, as Node reports it)', () => {
    const raw = `POST /owa/ HTTP/1.1\r\nHost: ${EXTERNAL}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n`;
    expect(failedHead(Buffer.from(raw), at(raw, 'zz'))).toMatchObject({ method: 'POST', url: '/owa/' });
  });

  it('clamps a bytesParsed beyond the chunk (Node reports one on a head spanning TLS records)', () => {
    const raw = `GET /owa/ HTTP/1.1\r\nHost: ${EXTERNAL}\r\n\r\n`;
    expect(failedHead(Buffer.from(raw), raw.length + 5000)?.url).toBe('/owa/');
    expect(failedHead(Buffer.from(raw), -1)?.url).toBe('/owa/');
  });

  it('bounds the target and the header values, and makes them printable', () => {
    const raw = `GET /${'a'.repeat(10_000)} HTTP/1.1\r\nHost: ${'h'.repeat(1000)}\r\nUser-Agent: ua\x00\xff\r\n\r\n`;
    const head = failedHead(Buffer.from(raw, 'latin1'), raw.length);
    expect(head?.url.length).toBe(2048);
    expect(head?.headers.host?.length).toBe(256);
    expect(head?.headers['user-agent']).toBe('ua??');
  });

  it('keeps the first Host and never reads Authorization or Cookie', () => {
    const raw = `GET /owa/ HTTP/1.1\r\n${AUTH}\r\nCookie: X-BackEndCookie=sekrit\r\nHost: a.example\r\nHost: b.example\r\n\r\n`;
    const head = failedHead(Buffer.from(raw), raw.length);
    expect(head?.headers).toEqual({ host: 'a.example' });
    expect(JSON.stringify(head)).not.toContain(SECRET);
    expect(JSON.stringify(head)).not.toContain('sekrit');
  });
});

/** A compiled policy for one service: deny to all, allow to a group, or no rule. */
function policyFor(rpc: 'deny-all' | 'allow-group'): Policy {
  const rule = (id: string, effect: 'allow' | 'deny', everyone: boolean, groups: string[]): Rule => ({
    id,
    effect,
    services: ['rpc'],
    everyone,
    groups: new Set(groups),
    users: new Set(),
  });
  const byService = new Map<Service, { deny: Rule[]; allow: Rule[] }>([
    [
      'rpc',
      rpc === 'deny-all'
        ? { deny: [rule('no-legacy', 'deny', true, [])], allow: [] }
        : { deny: [], allow: [rule('outlook-anywhere', 'allow', false, ['cn=oa,dc=lab,dc=test'])] },
    ],
  ]);
  return { mode: 'enforce', version: rpc, file: 'policy.yaml', byService, groupDns: [], groupNames: new Map() };
}

/** The part of the gateway's State that handleClientError reads. */
function stateFor(rpc: 'deny-all' | 'allow-group'): State {
  const partial = {
    config: { names: nameTable([EXTERNAL], ['exchange.lab.test'], 'external') },
    policy: policyFor(rpc),
  };
  return partial as unknown as State;
}

describe("handleClientError, fed by Node's own parser", () => {
  let server: Server;
  let port: number;
  let state: State;
  const records: AccessRecord[] = [];
  beforeAll(async () => {
    const owed = new OwedResponses();
    server = createServer({ requireHostHeader: false }, (req, res) => {
      if (owed.add(req.socket, res)) setTimeout(() => res.end(`ok ${req.url}`), req.url?.includes('slow') ? 100 : 0);
    });
    server.on('clientError', (err: Error, socket: Socket) =>
      handleClientError(err, socket, {
        state,
        owed,
        write: (r) => records.push(r),
        note: () => {},
      }),
    );
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise((r) => server.close(r));
  });

  /** Sends raw bytes; returns everything the server wrote back and the last access record. */
  async function exchange(
    bytes: string,
    rpc: 'deny-all' | 'allow-group' = 'deny-all',
  ): Promise<{ reply: string; record: AccessRecord | undefined }> {
    state = stateFor(rpc);
    const before = records.length;
    const reply = await new Promise<string>((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => s.write(bytes, 'latin1'));
      let got = '';
      s.on('data', (d: Buffer) => {
        got += d.toString('latin1');
      });
      s.on('close', () => resolve(got));
      s.on('error', reject);
    });
    return { reply, record: records.length > before ? records.at(-1) : undefined };
  }

  const H = `Host: ${EXTERNAL}\r\nUser-Agent: audit/1\r\n${AUTH}\r\n`;
  it.each([
    [
      'two Content-Length headers',
      `POST /owa/x?q=1 HTTP/1.1\r\n${H}Content-Length: 2\r\nContent-Length: 2\r\n\r\nab`,
      400,
      'POST',
      '/owa/x',
      'HPE_UNEXPECTED_CONTENT_LENGTH',
    ],
    [
      'Content-Length and chunked',
      `POST /ews/exchange.asmx HTTP/1.1\r\n${H}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
      400,
      'POST',
      '/ews/exchange.asmx',
      'HPE_INVALID_TRANSFER_ENCODING',
    ],
    [
      'chunked and Content-Length',
      `POST /ews/exchange.asmx HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n0\r\n\r\n`,
      400,
      'POST',
      '/ews/exchange.asmx',
      'HPE_INVALID_CONTENT_LENGTH',
    ],
    [
      'a header name with a space',
      `GET /owa/ HTTP/1.1\r\n${H}Bad Header: x\r\n\r\n`,
      400,
      'GET',
      '/owa/',
      'HPE_INVALID_HEADER_TOKEN',
    ],
    [
      'an over-long URL (one chunk)',
      `GET /owa/${'a'.repeat(20_000)}?q=1 HTTP/1.1\r\n${H}\r\n`,
      431,
      'GET',
      `/owa/${'a'.repeat(507)}…`,
      null,
    ],
    ['an unknown method', `FOO /owa/ HTTP/1.1\r\n${H}\r\n`, 501, 'FOO', '/owa/', 'HPE_INVALID_METHOD'],
  ])('logs %s with the failing request line, Host and User-Agent', async (_what, bytes, status, method, path, code) => {
    const { reply, record } = await exchange(bytes);
    expect(reply.split('\r\n')[0]).toMatch(new RegExp(`^HTTP/1.1 ${status} `));
    expect(record).toMatchObject({
      method,
      path,
      host: EXTERNAL,
      userAgent: 'audit/1',
      status,
      reason: 'bad-request',
      decision: 'deny',
      service: null,
      client: '127.0.0.1',
    });
    if (code) expect(record?.detail).toContain(code);
    expect(JSON.stringify(record)).not.toContain(SECRET);
  });

  it('logs the failing request of a pipelined pair, not the one before it', async () => {
    const { reply, record } = await exchange(
      `GET /owa/first HTTP/1.1\r\nHost: first.example\r\nUser-Agent: first/1\r\n\r\nPOST /ews/second HTTP/1.1\r\n${H}Content-Length: 1\r\nContent-Length: 1\r\n\r\n`,
    );
    expect(reply).toContain('400 Bad Request');
    expect(record).toMatchObject({
      method: 'POST',
      path: '/ews/second',
      host: EXTERNAL,
      userAgent: 'audit/1',
      status: 400,
    });
  });

  it('answers the refusal only after the response owed to the earlier pipelined request', async () => {
    // Node queues the first response; a raw write on the socket would overtake it.
    const slow = `GET /owa/slow HTTP/1.1\r\nHost: ${EXTERNAL}\r\n\r\n`;
    const { reply, record } = await exchange(`${slow}GET /owa/ HTTP/1.1\r\n${H}Bad Header: x\r\n\r\n`);
    const statuses = [...reply.matchAll(/HTTP\/1\.1 (\d+)/g)].map((m) => m[1]);
    expect(statuses).toEqual(['200', '400']);
    expect(reply.indexOf('ok /owa/slow')).toBeLessThan(reply.indexOf('400 Bad Request'));
    expect(record).toMatchObject({ method: 'GET', path: '/owa/', status: 400 });
  });

  it('logs no garbage when there is no request line to read', async () => {
    // The tail-of-a-head case needs TLS records: test/integration/malformed.test.ts.
    const { record } = await exchange(`GET /owa/\x7f HTTP/1.1\r\n${H}\r\n`);
    expect(record).toMatchObject({
      method: '',
      path: '',
      host: null,
      userAgent: null,
      status: 400,
      reason: 'bad-request',
    });
  });

  describe('RPC_IN_DATA / RPC_OUT_DATA are the rpc service wherever they point', () => {
    const rpc = (method: string, target: string) =>
      `${method} ${target} HTTP/1.1\r\nHost: ${EXTERNAL}\r\nUser-Agent: MSRPC\r\n${AUTH}\r\nContent-Length: 0\r\n\r\n`;
    it.each([
      ['RPC_IN_DATA', '/rpc/rpcproxy.dll?x:6001', '/rpc/rpcproxy.dll'],
      ['RPC_IN_DATA', '/owa/', '/owa/'],
      ['RPC_OUT_DATA', '/ews/exchange.asmx?x', '/ews/exchange.asmx'],
      ['RPC_OUT_DATA', '/nowhere', '/nowhere'],
    ])('%s %s: 403 denied-by-rule as rpc when the policy denies rpc', async (method, target, path) => {
      const { reply, record } = await exchange(rpc(method, target));
      expect(reply.split('\r\n')[0]).toBe('HTTP/1.1 403 Forbidden');
      expect(record).toMatchObject({
        method,
        path,
        service: 'rpc',
        reason: 'denied-by-rule',
        rule: 'no-legacy',
        status: 403,
        userAgent: 'MSRPC',
        host: EXTERNAL,
      });
    });

    it.each([
      ['RPC_IN_DATA', '/owa/'],
      ['RPC_OUT_DATA', '/autodiscover/autodiscover.xml'],
    ])('%s %s: 400 as rpc when the policy allows rpc', async (method, target) => {
      const { reply, record } = await exchange(rpc(method, target), 'allow-group');
      expect(reply.split('\r\n')[0]).toBe('HTTP/1.1 400 Bad Request');
      expect(record).toMatchObject({
        method,
        service: 'rpc',
        reason: 'bad-request',
        status: 400,
        detail: `${method} outside /rpc/ is never forwarded`,
      });
    });

    it('at /rpc/ but not first on its connection: 501, as rpc', async () => {
      const { reply, record } = await exchange(
        `GET /owa/ HTTP/1.1\r\nHost: ${EXTERNAL}\r\n\r\n${rpc('RPC_IN_DATA', '/rpc/rpcproxy.dll')}`,
        'allow-group',
      );
      expect(reply).toContain('HTTP/1.1 501 Not Implemented');
      expect(record).toMatchObject({ method: 'RPC_IN_DATA', path: '/rpc/rpcproxy.dll', service: 'rpc', status: 501 });
    });

    it('an internal name is misdirected (421) before the service counts', async () => {
      const { record } = await exchange(
        rpc('RPC_IN_DATA', '/rpc/rpcproxy.dll').replace(`Host: ${EXTERNAL}`, 'Host: exchange.lab.test'),
      );
      expect(record).toMatchObject({ status: 421, reason: 'misdirected', service: null, host: 'exchange.lab.test' });
    });
  });
});
