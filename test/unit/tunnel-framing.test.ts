/**
 * The Outlook Anywhere tunnel's framing (rpc-tunnel.ts, client-error.ts): a head is parsed
 * strictly, admitted only with exactly one Content-Length and no Transfer-Encoding, and re-sent
 * with the framing the gateway judged, whatever `Connection` names.
 */
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { rpcBodyLength, rpcFraming } from '../../src/exchange/client-error.js';
import { parseHead, rebuildHead } from '../../src/exchange/rpc-head.js';

const LINE = 'RPC_IN_DATA /rpc/rpcproxy.dll?ex:6001 HTTP/1.1';
const head = (...lines: string[]) => Buffer.from([LINE, ...lines].join('\r\n'), 'latin1');

describe('parseHead', () => {
  it.each([
    ['a method other than the RPC ones', Buffer.from('GET /rpc/ HTTP/1.1\r\nHost: a')],
    ['HTTP/2.0', Buffer.from('RPC_IN_DATA /rpc/ HTTP/2.0\r\nHost: a')],
    ['a space in the target', Buffer.from('RPC_IN_DATA /rpc/ x HTTP/1.1\r\nHost: a')],
    ['obs-fold', head('Host: a', ' folded')],
    ['a control character in a value', head('Host: a\x01')],
    ['a space before the colon', head('Host : a')],
    ['a bare line', head('Host: a', 'garbage')],
  ])('refuses %s', (_what, raw) => {
    expect(parseHead(raw)).toBeNull();
  });
  it('keeps every line in order, and the first of a name in headers', () => {
    const h = parseHead(head('Host: a', 'Content-Length: 5', 'X-A: 1', 'x-a: 2'));
    expect(h?.rawHeaders).toEqual(['Host', 'a', 'Content-Length', '5', 'X-A', '1', 'x-a', '2']);
    expect(h?.headers['x-a']).toBe('1');
  });
});

describe('rpcBodyLength and rpcFraming', () => {
  it.each([
    [['Content-Length', '5'], 5],
    [['Content-Length', '0'], 0],
    [['Content-Length', '1073741824'], 1073741824],
    [[], null],
    [['Content-Length', '5', 'Content-Length', '5'], null],
    [['Content-Length', '5', 'Transfer-Encoding', 'chunked'], null],
    [['Transfer-Encoding', 'chunked'], null],
    [['Content-Length', '+5'], null],
    [['Content-Length', '5 '], null],
    [['Content-Length', '12345678901'], null],
  ] as const)('%j → %s', (raw, length) => {
    const headers = { 'content-length': raw[1] === undefined ? undefined : raw[1] } as { 'content-length'?: string };
    expect(rpcBodyLength(raw, headers)).toBe(length);
  });
  it('answers 417 to an Expect other than 100-continue, and nothing to 100-continue', () => {
    const raw = ['Content-Length', '0'];
    expect(rpcFraming(raw, { 'content-length': '0', expect: '200-ok' })?.[0]).toBe(417);
    expect(rpcFraming(raw, { 'content-length': '0', expect: '100-Continue' })).toBeNull();
  });
});

describe('rebuildHead', () => {
  const client = { remoteAddress: '192.0.2.7' } as Socket;
  it('writes Host, exactly one Content-Length and the Authorization itself, whatever Connection names', () => {
    const h = parseHead(
      head(
        'Host: mail',
        'Authorization: Basic eDp5',
        'Content-Length: 67',
        'Connection: Content-Length, Host, X-Drop',
        'X-Drop: 1',
        'X-Keep: 2',
      ),
    )!;
    const out = rebuildHead(h, 67, client, 'rid-1');
    const lines = out.split('\r\n');
    expect(lines[0]).toBe(LINE);
    expect(lines.filter((l) => /^content-length:/i.test(l))).toEqual(['Content-Length: 67']);
    expect(lines.filter((l) => /^host:/i.test(l))).toEqual(['Host: mail']);
    expect(lines.filter((l) => /^authorization:/i.test(l))).toEqual(['Authorization: Basic eDp5']);
    expect(lines).toContain('X-Keep: 2');
    expect(lines.some((l) => /^x-drop:/i.test(l))).toBe(false);
    expect(lines).toContain('X-Forwarded-For: 192.0.2.7');
    expect(lines).toContain('Connection: close');
    expect(out.endsWith('\r\n\r\n')).toBe(true);
  });
  it('drops hop-by-hop, Expect and gateway-owned headers from the client', () => {
    const h = parseHead(
      head(
        'Host: mail',
        'Content-Length: 0',
        'Expect: 100-continue',
        'X-Forwarded-For: 10.0.0.1',
        'X-Request-Id: evil',
        'Keep-Alive: 5',
      ),
    )!;
    const out = rebuildHead(h, 0, client, 'rid-2');
    expect(out).not.toMatch(/expect:|10\.0\.0\.1|evil|keep-alive:/i);
    expect(out).toContain('X-Request-Id: rid-2');
  });
});
