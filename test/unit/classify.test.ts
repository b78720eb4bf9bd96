// Table tests for classify (src/pipeline/classify.ts): names first (421), then the path (400 / 404), then the
// service table (INTERFACE.md "Services"). Each row is one request as a client could send it.
import { describe, expect, it } from 'vitest';
import { checkHead, MAX_HEADER_LINES } from '../../src/pipeline/check-head.js';
import {
  classify,
  classifyRpc,
  hostName,
  nameTable,
  normalizePath,
  pathOf,
  serviceOf,
} from '../../src/pipeline/classify.js';
import type { Service } from '../../src/pipeline/services.js';

const EXTERNAL = 'outlook-ext.lab.test';
// Mixed case and a trailing dot in the config's own lists: nameTable must normalize both.
const names = nameTable(['Outlook-Ext.Lab.Test', 'autodiscover.lab.test.'], ['OUTLOOK.lab.test'], 'external');
const rejectNoSni = nameTable([EXTERNAL], ['outlook.lab.test'], 'reject');

/** Classifies a request target sent to the external name with matching SNI and Host. */
const route = (rawUrl: string) => classify(EXTERNAL, EXTERNAL, rawUrl, names);

describe('classify: the service table (INTERFACE.md "Services")', () => {
  const rows: [rawUrl: string, service: Service, path: string][] = [
    ['/mapi/emsmdb/?MailboxId=x@lab.test', 'mapi', '/mapi/emsmdb/'],
    ['/MAPI/nspi/', 'mapi', '/mapi/nspi/'],
    ['/mapi', 'mapi', '/mapi'],
    ['/rpc/rpcproxy.dll?exchange.lab.test:6001', 'rpc', '/rpc/rpcproxy.dll'],
    ['/ews/exchange.asmx', 'ews', '/ews/exchange.asmx'],
    ['/EWS/Exchange.asmx', 'ews', '/ews/exchange.asmx'],
    ['/ews', 'ews', '/ews'],
    ['/ews/', 'ews', '/ews/'],
    ['/ews/mrsproxy.svc', 'mrsproxy', '/ews/mrsproxy.svc'],
    ['/EWS/MRSProxy.svc', 'mrsproxy', '/ews/mrsproxy.svc'],
    ['/ews/mrsproxy.svc/extra', 'mrsproxy', '/ews/mrsproxy.svc/extra'],
    ['/ews/mrsproxy.svcx', 'ews', '/ews/mrsproxy.svcx'], // only the exact name is mrsproxy
    ['/Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=D1', 'activesync', '/microsoft-server-activesync'],
    ['/microsoft-server-activesync/default.eas', 'activesync', '/microsoft-server-activesync/default.eas'],
    ['/owa', 'owa', '/owa'],
    ['/owa/auth/logon.aspx?replaceCurrent=1', 'owa', '/owa/auth/logon.aspx'],
    ['/ecp/', 'ecp', '/ecp/'],
    ['/OAB/0a1b2c/oab.xml', 'oab', '/oab/0a1b2c/oab.xml'],
    ['/autodiscover/autodiscover.xml', 'autodiscover', '/autodiscover/autodiscover.xml'],
    ['/Autodiscover/Autodiscover.xml', 'autodiscover', '/autodiscover/autodiscover.xml'],
    ['/PowerShell/', 'powershell', '/powershell/'],
    ['/api/v2.0/me/messages', 'api', '/api/v2.0/me/messages'],
    // Normalization: decode once, lowercase, merge `//`, drop `.` segments, ignore the query.
    ['//ews///x', 'ews', '/ews/x'],
    ['/ews/./x/.', 'ews', '/ews/x'],
    ['/./ews/./', 'ews', '/ews/'],
    ['/ews/%2e/exchange.asmx', 'ews', '/ews/exchange.asmx'],
    ['/%65ws/%45xchange.asmx', 'ews', '/ews/exchange.asmx'],
    ['/ews/x?y=../../ecp&z=%2f%5c%00', 'ews', '/ews/x'],
    ['/owa/%C3%A9t%C3%A9', 'owa', '/owa/\u00e9t\u00e9'],
  ];
  it.each(rows)('%s → %s', (rawUrl, service, path) => {
    expect(route(rawUrl)).toEqual({ ok: true, service, host: EXTERNAL, path });
  });
});

describe('classify: anything outside the table is unknown-service (404)', () => {
  it.each([
    '/',
    '/mapix',
    '/mapix/',
    '/ewsx/',
    '/Microsoft-Server-ActiveSyncX',
    '/owa2/',
    '/exchange/',
    '/aspnet_client/system_web/',
    '/favicon.ico',
    '/rpcx',
  ])('%s', (rawUrl) => {
    expect(route(rawUrl)).toMatchObject({ ok: false, reason: 'unknown-service' });
  });
});

describe('classify: ambiguous or malformed targets are bad-request (400)', () => {
  const rows: [what: string, rawUrl: string][] = [
    ['`..` segment', '/ews/../ecp/'],
    ['`..` at the end', '/owa/..'],
    ['encoded `..`', '/ews/%2e%2e/ecp/'],
    ['encoded `..`, upper case', '/ews/%2E%2E/ecp/'],
    ['half-encoded `..`', '/ews/.%2e/ecp/'],
    ['encoded `/`', '/ecp%2fdefault.aspx'],
    ['encoded `/` and `..`', '/ews%2F..%2Fecp/'],
    ['encoded `\\`', '/ews%5c..%5cecp/'],
    ['raw `\\`', '/ews\\..\\ecp/'],
    ['raw `\\` alone', '/ews/x\\y'],
    ['double encoding `%25`', '/ews/%252e%252e/ecp/'],
    ['`%25` alone', '/ews/100%25'],
    ['stray `%` at the end', '/ews/%'],
    ['truncated escape', '/ews/%2'],
    ['non-hex escape', '/ews/%zz'],
    ['IIS `%u` escape', '/ews/%u002e%u002e/ecp/'],
    ['overlong UTF-8 `.`', '/ews/%c0%ae%c0%ae/ecp/'],
    ['overlong UTF-8 `/`', '/ews/%c0%af'],
    ['3-byte overlong `.`', '/ews/%e0%80%ae%e0%80%ae/'],
    ['invalid UTF-8 byte', '/ews/%ff'],
    ['NUL', '/ews/%00'],
    ['NUL before an extension', '/ews/x%00.asmx'],
    ['CR LF', '/ews/%0d%0aX-Injected:%201'],
    ['raw tab', '/ews/\t'],
    ['encoded tab', '/ecp%09/'],
    ['DEL', '/ews/%7f'],
    ['C1 control (NEL)', '/ews/%c2%85'],
    ['trailing dot', '/ecp./'],
    ['trailing dots', '/ecp../'],
    ['encoded trailing dot', '/ecp%2e/'],
    ['trailing space', '/ecp%20/'],
    ['alternate data stream', '/ecp::$DATA'],
    ['alternate data stream folder', '/ecp::$INDEX_ALLOCATION/default.aspx'],
    ['8.3 short name', '/ECP~1/'],
    ['long s that upper-cases to S (IIS would read mrsproxy)', '/ews/mr%C5%BFproxy.svc'],
    ['Kelvin sign that lower-cases to k', '/owa/%E2%84%AA'],
    ['8.3 short name below a service', '/owa/AUTH~1/logon.aspx'],
    ['encoded ? (a delimiter smuggled into the path)', '/ecp%3f/'],
    ['encoded #', '/owa/%23/'],
    ['ASP.NET cookieless segment (S(…))', '/ews/(S(abc))/mrsproxy.svc'],
    ['ASP.NET cookieless segment (X(…))', '/owa/(X(1)S(2))/auth/'],
    ['absolute-form', `https://${EXTERNAL}/ews/exchange.asmx`],
    ['asterisk-form', '*'],
    ['authority-form', `${EXTERNAL}:443`],
    ['empty target', ''],
  ];
  it.each(rows)('%s: %j', (_what, rawUrl) => {
    expect(route(rawUrl)).toMatchObject({ ok: false, reason: 'bad-request' });
  });
});

describe('classify: names (421 misdirected)', () => {
  type Row = [
    what: string,
    sni: string | false | undefined,
    host: string | undefined,
    expected: string | 'misdirected',
  ];
  const rows: Row[] = [
    ['SNI and Host agree', EXTERNAL, EXTERNAL, EXTERNAL],
    ['SNI upper case, Host with port', 'OUTLOOK-EXT.LAB.TEST', `${EXTERNAL}:443`, EXTERNAL],
    ['Host mixed case with another port', EXTERNAL, 'Outlook-Ext.Lab.Test:8443', EXTERNAL],
    ['SNI with trailing dot', `${EXTERNAL}.`, EXTERNAL, EXTERNAL],
    ['Host with trailing dot and port', EXTERNAL, `${EXTERNAL}.:443`, EXTERNAL],
    [
      'name listed with a trailing dot in the config',
      'autodiscover.lab.test',
      'autodiscover.lab.test',
      'autodiscover.lab.test',
    ],
    ['SNI given, Host missing (HTTP/1.0)', EXTERNAL, undefined, EXTERNAL],
    ['internal name', 'outlook.lab.test', 'outlook.lab.test', 'misdirected'],
    ['internal name, upper case', 'OUTLOOK.LAB.TEST', 'OUTLOOK.LAB.TEST', 'misdirected'],
    ['unknown name', 'exchange.lab.test', 'exchange.lab.test', 'misdirected'],
    ['SNI external, Host internal (fronting)', EXTERNAL, 'outlook.lab.test', 'misdirected'],
    ['SNI and Host both external but different', EXTERNAL, 'autodiscover.lab.test', 'misdirected'],
    ['SNI external, Host unknown', EXTERNAL, 'evil.test', 'misdirected'],
    ['no SNI (undefined), Host external', undefined, EXTERNAL, EXTERNAL],
    ['no SNI (false), Host external with port', false, 'OUTLOOK-EXT.lab.test:443', EXTERNAL],
    ['no SNI (empty string), Host external', '' as string, EXTERNAL, EXTERNAL],
    ['no SNI, Host internal', undefined, 'outlook.lab.test', 'misdirected'],
    ['no SNI, Host unknown', undefined, 'evil.test', 'misdirected'],
    ['no SNI, Host empty', undefined, '', 'misdirected'],
    ['no SNI and no Host', undefined, undefined, 'misdirected'],
  ];
  it.each(rows)('%s', (_what, sni, host, expected) => {
    const result = classify(sni, host, '/ews/exchange.asmx', names);
    if (expected === 'misdirected') expect(result).toMatchObject({ ok: false, reason: 'misdirected' });
    else expect(result).toEqual({ ok: true, service: 'ews', host: expected, path: '/ews/exchange.asmx' });
  });

  it('names.noSni: reject refuses every client without SNI, even with an external Host', () => {
    expect(classify(undefined, EXTERNAL, '/ews/', rejectNoSni)).toMatchObject({
      ok: false,
      reason: 'misdirected',
      detail: 'client sent no SNI',
    });
    expect(classify(false, EXTERNAL, '/ews/', rejectNoSni)).toMatchObject({ ok: false, reason: 'misdirected' });
    expect(classify(undefined, undefined, '/ews/', rejectNoSni)).toMatchObject({ ok: false, reason: 'misdirected' });
    // With SNI, reject changes nothing.
    expect(classify(EXTERNAL, EXTERNAL, '/ews/', rejectNoSni)).toMatchObject({ ok: true, service: 'ews' });
  });

  it('the detail says which name was wrong', () => {
    expect(classify('outlook.lab.test', undefined, '/ews/', names)).toMatchObject({
      detail: 'internal name outlook.lab.test',
    });
    expect(classify('exchange.lab.test', undefined, '/ews/', names)).toMatchObject({
      detail: 'unknown name exchange.lab.test',
    });
    expect(classify(EXTERNAL, 'outlook.lab.test', '/ews/', names)).toMatchObject({
      detail: `SNI ${EXTERNAL} and Host outlook.lab.test disagree`,
    });
  });

  it('names are judged before the path: a wrong name is 421 whatever the path', () => {
    for (const rawUrl of ['/ews/../ecp/', '/nothing-here', '*']) {
      expect(classify('outlook.lab.test', 'outlook.lab.test', rawUrl, names)).toMatchObject({ reason: 'misdirected' });
    }
  });

  it('a malformed path is 400 even when it would not be a service either', () => {
    expect(route('/nothing/../here')).toMatchObject({ reason: 'bad-request' });
  });

  it('an IPv6 literal Host matches the bare address in names.external', () => {
    expect(hostName('[::1]:8443')).toBe('::1');
    expect(classify(undefined, '[::1]:8443', '/ews/', nameTable(['::1'], [], 'external'))).toMatchObject({
      ok: true,
      host: '::1',
    });
  });
});

describe('pathOf: the path the access log records', () => {
  it.each([
    ['/owa/?a=1', '/owa/'],
    ['/ews/exchange.asmx', '/ews/exchange.asmx'],
    ['https://alice:S3cret@mail.example.com/owa/?password=x', 'https://mail.example.com/owa/'],
    ['http://a:p@ss@host/x', 'http://host/x'],
    ['alice:S3cret@mail.example.com:443', 'mail.example.com:443'],
    ['https://mail.example.com/owa/', 'https://mail.example.com/owa/'],
    ['*', '*'],
  ])('%s → %s (never a query, never userinfo)', (url, path) => {
    expect(pathOf(url)).toBe(path);
  });
});

describe('hostName: Host header → bare lowercase name', () => {
  it.each<[string | undefined, string | null]>([
    [undefined, null],
    ['', null],
    ['Outlook-Ext.Lab.Test', 'outlook-ext.lab.test'],
    ['outlook-ext.lab.test:443', 'outlook-ext.lab.test'],
    ['outlook-ext.lab.test.', 'outlook-ext.lab.test'],
    ['outlook-ext.lab.test.:8443', 'outlook-ext.lab.test'],
    [' outlook-ext.lab.test ', 'outlook-ext.lab.test'],
    ['127.0.0.1:8443', '127.0.0.1'],
    ['[::1', null],
    [':443', null],
  ])('%j → %j', (host, expected) => {
    expect(hostName(host)).toBe(expected);
  });
});

describe('nameTable', () => {
  it('lowercases and drops a trailing dot, keeps noSni', () => {
    const t = nameTable(['A.Lab.Test.', 'b.lab.test'], ['C.LAB.TEST'], 'reject');
    expect([...t.external]).toEqual(['a.lab.test', 'b.lab.test']);
    expect([...t.internal]).toEqual(['c.lab.test']);
    expect(t.noSni).toBe('reject');
  });
});

describe('normalizePath', () => {
  it.each<[string, string | null]>([
    ['/', '/'],
    ['//', '/'],
    ['/EWS//Exchange.asmx', '/ews/exchange.asmx'],
    ['/ews/x/', '/ews/x/'],
    ['/ews/x//', '/ews/x/'],
    ['/ews/.', '/ews'],
    ['/ews/./', '/ews/'],
    ['/owa/%7e', '/owa/~'], // a tilde without a digit is no short name
    ['ews/', null],
    ['/ews/..', null],
    ['/ews/...', null],
    ['/ews/%2f', null],
  ])('%j → %j', (raw, expected) => {
    expect(normalizePath(raw)).toBe(expected);
    expect(normalizePath(raw)).toBe(expected); // again, from the memo
  });

  it('answers the same from its memo, across a refill and for long paths', () => {
    const raws = ['/ews/..', '/EWS/Exchange.asmx', '/ews/%2f', '/owa/x~1', `/owa/${'a'.repeat(300)}`, '/ecp./'];
    const first = raws.map((r) => normalizePath(r));
    expect(first).toEqual([null, '/ews/exchange.asmx', null, null, `/owa/${'a'.repeat(300)}`, null]);
    for (let i = 0; i < 3000; i++) normalizePath(`/ews/${i}`); // more than the memo holds
    expect(raws.map((r) => normalizePath(r))).toEqual(first);
    expect(normalizePath('/ews/2999')).toBe('/ews/2999');
  });
});

describe('serviceOf: normalized path → service', () => {
  it.each<[string, Service | null]>([
    ['/mapi', 'mapi'],
    ['/mapi/', 'mapi'],
    ['/mapix', null],
    ['/rpc', 'rpc'],
    ['/ews', 'ews'],
    ['/ews/mrsproxy.svc', 'mrsproxy'],
    ['/ews/mrsproxy.svc/', 'mrsproxy'],
    ['/microsoft-server-activesync', 'activesync'],
    ['/microsoft-server-activesync/', 'activesync'],
    ['/microsoft-server-activesyncx', null],
    ['/owa', 'owa'],
    ['/ecp', 'ecp'],
    ['/oab', 'oab'],
    ['/autodiscover', 'autodiscover'],
    ['/powershell', 'powershell'],
    ['/api', 'api'],
    ['/', null],
    ['/apix', null],
  ])('%s → %s', (path, service) => {
    expect(serviceOf(path)).toBe(service);
  });
});

describe('checkHead', () => {
  const H = 'mail.lab.test';
  /** A request head: `raw` are the header lines as sent; `headers` is what Node folds them into. */
  const head = (method: string, raw: string[], headers: Record<string, string> = {}, httpVersion = '1.1') => ({
    method,
    httpVersion,
    rawHeaders: raw,
    headers: { ...(raw.length > 0 ? firstOf(raw) : {}), ...headers },
  });
  const firstOf = (raw: string[]) => {
    const out: Record<string, string> = {};
    for (let i = 0; i < raw.length; i += 2) out[(raw[i] as string).toLowerCase()] ??= raw[i + 1] as string;
    return out;
  };
  it.each([
    ['GET with one Authorization', head('GET', ['Host', H, 'Authorization', 'Basic eDp5']), null],
    ['OPTIONS (ActiveSync)', head('OPTIONS', ['Host', H]), null],
    [
      'two Authorization headers',
      head('GET', ['Host', H, 'Authorization', 'Basic eDp5', 'authorization', 'Basic eTp6']),
      400,
    ],
    ['TRACE', head('TRACE', ['Host', H]), 405],
    ['PROPFIND', head('PROPFIND', ['Host', H]), 405],
    ['Transfer-Encoding: gzip, chunked', head('POST', ['Host', H, 'Transfer-Encoding', 'gzip, chunked']), 501],
    ['Transfer-Encoding: chunked', head('POST', ['Host', H, 'Transfer-Encoding', 'chunked']), null],
    ['Host with userinfo', head('GET', ['Host', 'mail.lab.test:1@evil.example']), 400],
    ['Host with a path', head('GET', ['Host', 'mail.lab.test/x']), 400],
    ['Host name:port', head('GET', ['Host', 'mail.lab.test:8443']), null],
    ['Host [v6]:port', head('GET', ['Host', '[::1]:8443']), null],
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1; HTTP/1.0 clients may leave it out.
    ['two Host headers', head('GET', ['Host', H, 'Host', 'evil.example']), 400],
    ['two Host headers, same value, different case', head('GET', ['Host', H, 'HOST', H]), 400],
    ['two Host headers in HTTP/1.0', head('GET', ['Host', H, 'host', H], {}, '1.0'), 400],
    ['HTTP/1.1 without Host', head('GET', []), 400],
    [
      'HTTP/1.1 without Host, other headers present',
      head('GET', ['User-Agent', 'x', 'Authorization', 'Basic eDp5']),
      400,
    ],
    ['HTTP/1.0 without Host', head('GET', [], {}, '1.0'), null],
    ['HTTP/1.0 with Host', head('GET', ['Host', H], {}, '1.0'), null],
    ['an empty Host', head('GET', ['Host', '']), 400],
    // Node refuses these itself (HPE_UNEXPECTED_CONTENT_LENGTH, HPE_INVALID_TRANSFER_ENCODING);
    // two Transfer-Encoding lines with different codings do reach `request` (checked on Node 20.20).
    ['two Content-Length headers', head('POST', ['Host', H, 'Content-Length', '2', 'Content-Length', '2']), 400],
    [
      'two Transfer-Encoding headers',
      head('POST', ['Host', H, 'Transfer-Encoding', 'gzip', 'Transfer-Encoding', 'chunked'], {
        'transfer-encoding': 'gzip, chunked',
      }),
      400,
    ],
    [
      'Content-Length and Transfer-Encoding',
      head('POST', ['Host', H, 'Content-Length', '5', 'Transfer-Encoding', 'chunked']),
      400,
    ],
    ['one Content-Length', head('POST', ['Host', H, 'Content-Length', '5']), null],
    // Node's parser hands these versions over as they are.
    ['HTTP/2.0 on an HTTP/1 connection', head('GET', ['Host', H], {}, '2.0'), 505],
    ['HTTP/0.9 request line', head('GET', ['Host', H], {}, '0.9'), 505],
    // A hop that honours `Connection` would drop the framing and read the body as a second request.
    [
      'Connection: Content-Length',
      head('POST', ['Host', H, 'Content-Length', '5', 'Connection', 'Content-Length']),
      400,
    ],
    [
      'Connection: keep-alive, transfer-encoding',
      head('POST', ['Host', H, 'Transfer-Encoding', 'chunked', 'Connection', 'keep-alive, transfer-encoding']),
      400,
    ],
    ['Connection: HOST', head('GET', ['Host', H, 'Connection', 'HOST']), 400],
    ['Connection: Authorization', head('GET', ['Host', H, 'Connection', 'Authorization']), 400],
    [
      'a second Connection line naming Content-Length',
      head('POST', ['Host', H, 'Connection', 'keep-alive', 'Connection', 'content-length']),
      400,
    ],
    ['Connection: keep-alive, X-Custom', head('GET', ['Host', H, 'Connection', 'keep-alive, X-Custom']), null],
    ['Connection: close', head('GET', ['Host', H, 'Connection', 'close']), null],
    // Node keeps ~1,000 header lines and drops the rest: the gateway judges all it forwards, or refuses.
    [
      `${MAX_HEADER_LINES} header lines`,
      head('GET', ['Host', H, ...Array.from({ length: MAX_HEADER_LINES - 1 }, () => ['X-A', 'b']).flat()]),
      null,
    ],
    [
      `${MAX_HEADER_LINES + 1} header lines`,
      head('GET', ['Host', H, ...Array.from({ length: MAX_HEADER_LINES }, () => ['X-A', 'b']).flat()]),
      431,
    ],
    [
      'a routing cookie on a second Cookie line',
      head('GET', ['Host', H, 'Cookie', 'a=b', 'Cookie', 'X-BEResource=localhost/ecp/x']),
      400,
    ],
    [
      'X-AnonResource-Backend cookie',
      head('GET', ['Host', H, 'Cookie', 'a=b; X-AnonResource-Backend=localhost/ecp/x']),
      400,
    ],
  ] as const)('%s', (_what, h, status) => {
    const r = checkHead(h);
    if (status === null) expect(r).toBeNull();
    else {
      expect(r?.reason).toBe('bad-request');
      expect(r?.status ?? 400).toBe(status);
    }
  });

  it.each([
    [['Host', H, 'Host', 'evil.example'], 'more than one Host header'],
    [['Host', H, 'Content-Length', '1', 'content-length', '1'], 'more than one Content-Length header'],
    [
      ['Host', H, 'Transfer-Encoding', 'chunked', 'Transfer-Encoding', 'chunked'],
      'more than one Transfer-Encoding header',
    ],
    [['Host', H, 'Content-Length', '1', 'Transfer-Encoding', 'chunked'], 'both Content-Length and Transfer-Encoding'],
    [[], 'HTTP/1.1 request without Host'],
  ])('names the problem: %j → %s', (raw, detail) => {
    expect(checkHead(head('POST', raw))?.detail).toBe(detail);
  });

  it('never puts a header value into the detail', () => {
    const r = checkHead(
      head('GET', ['Host', H, 'Authorization', 'Basic c2VjcmV0OnB3', 'Authorization', 'Basic c2VjcmV0OnB3']),
    );
    expect(r?.detail).not.toContain('c2VjcmV0');
  });
});

describe('classifyRpc: the RPC methods are the rpc service wherever they point', () => {
  it.each([
    ['/rpc/rpcproxy.dll?exchange.lab.test:6001', '/rpc/rpcproxy.dll', true],
    ['/RPC/RpcProxy.dll', '/rpc/rpcproxy.dll', true],
    ['/rpc', '/rpc', true],
    ['/owa/', '/owa/', false],
    ['/ews/exchange.asmx', '/ews/exchange.asmx', false],
    ['/nothing-here', '/nothing-here', false],
    ['/', '/', false],
  ])('%s → rpc at %s (at /rpc/: %s)', (rawUrl, path, atRpcPath) => {
    expect(classifyRpc(EXTERNAL, EXTERNAL, rawUrl, names)).toEqual({
      ok: true,
      service: 'rpc',
      host: EXTERNAL,
      path,
      atRpcPath,
    });
  });

  it('checks names first: internal and unknown names are misdirected', () => {
    expect(classifyRpc('outlook.lab.test', 'outlook.lab.test', '/rpc/rpcproxy.dll', names)).toMatchObject({
      ok: false,
      reason: 'misdirected',
    });
    expect(classifyRpc(EXTERNAL, 'other.example', '/rpc/rpcproxy.dll', names)).toMatchObject({
      ok: false,
      reason: 'misdirected',
    });
  });

  it.each([
    '/rpc/../owa/',
    '/rpc/%2e%2e/owa/',
    '/rpc/a%2fb',
    'rpcproxy.dll',
    '/owa/x/powershell',
    '/rpc/x@evil.example/',
  ])('refuses the malformed target %s as bad-request', (rawUrl) => {
    expect(classifyRpc(EXTERNAL, EXTERNAL, rawUrl, names)).toMatchObject({ ok: false, reason: 'bad-request' });
  });
});
