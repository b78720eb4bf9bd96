/**
 * Autodiscover: autodiscover.json answered by the gateway itself (never forwarded, the same
 * answer for every address), autodiscover.xml authorized by the logon identity, and the
 * ProxyShell / ProxyNotShell / ProxyLogon request shapes refused before Exchange, with and
 * without credentials.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { USERS } from '../helpers/ad-fixtures.js';
import { expectNotForwarded, send, startHarness, type Harness } from '../helpers/gateway-harness.js';

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ directory: 'ldap' });
});
afterAll(async () => {
  await h?.close();
});

const alice = { user: USERS.alice.sam, password: USERS.alice.password };

describe('autodiscover.json', () => {
  it.each([
    [
      '/autodiscover/autodiscover.json?Email=alice@lab.test&Protocol=EWS&RedirectCount=1',
      { Protocol: 'EWS', Url: 'https://mail.lab.test/EWS/Exchange.asmx' },
    ],
    [
      '/Autodiscover/Autodiscover.json?Email=nobody@lab.test&Protocol=ActiveSync',
      { Protocol: 'ActiveSync', Url: 'https://mail.lab.test/Microsoft-Server-ActiveSync' },
    ],
    [
      '/autodiscover/autodiscover.json/v1.0/alice@lab.test?Protocol=AutodiscoverV1',
      { Protocol: 'AutodiscoverV1', Url: 'https://mail.lab.test/autodiscover/autodiscover.xml' },
    ],
  ])('answers %s itself, without credentials, and never forwards it', async (path, body) => {
    const before = h.standin.requests.length;
    const r = await send(h, path, {});
    expect(r.status).toBe(200);
    expect(JSON.parse(r.text())).toEqual(body);
    expect(h.standin.requests.length).toBe(before);
    expect((await h.record((x) => x.path === path.split('?')[0])).detail).toBe(
      'autodiscover.json answered by the gateway',
    );
  });

  it('gives the same answer for any address (no user enumeration)', async () => {
    const known = await expectNotForwarded(h, () =>
      send(h, '/autodiscover/autodiscover.json?Email=alice@lab.test&Protocol=EWS', {}),
    );
    const unknown = await expectNotForwarded(h, () =>
      send(h, '/autodiscover/autodiscover.json?Email=no.such.user@lab.test&Protocol=EWS', {}),
    );
    expect(unknown.text()).toBe(known.text());
  });

  it('takes GET only', async () => {
    expect(
      (
        await expectNotForwarded(h, () =>
          send(h, '/autodiscover/autodiscover.json?Email=alice@lab.test&Protocol=EWS', { method: 'POST', body: 'x' }),
        )
      ).status,
    ).toBe(405);
  });
});

describe('ProxyShell, ProxyNotShell and ProxyLogon shapes never reach Exchange', () => {
  const shapes: [string, string, Record<string, string>?][] = [
    [
      'ProxyShell → OWA',
      '/autodiscover/autodiscover.json?@evil.corp/owa/?&Email=autodiscover/autodiscover.json%3F@evil.corp',
    ],
    [
      'ProxyShell → MAPI/NSPI',
      '/autodiscover/autodiscover.json?@evil.corp/mapi/nspi/?&Email=autodiscover/autodiscover.json%3F@evil.corp',
    ],
    [
      'ProxyShell → PowerShell',
      '/autodiscover/autodiscover.json?@evil.corp/PowerShell?X-Rps-CAT=VgEAVAdXaW5kb3dzQwBBCE&Email=autodiscover/autodiscover.json%3F@evil.corp',
    ],
    [
      'ProxyShell, path form',
      '/autodiscover/autodiscover.json/@evil.corp/ews/exchange.asmx?&Email=autodiscover/autodiscover.json%3F@evil.corp',
    ],
    [
      'ProxyNotShell (CVE-2022-41040)',
      '/autodiscover/autodiscover.json?@evil.com/owa/&Email=autodiscover/autodiscover.json?@evil.com&Protocol=XYZ&FooProtocol=Powershell',
    ],
    [
      'ProxyNotShell → PowerShell',
      '/autodiscover/autodiscover.json?@evil.com/PowerShell/?&Email=autodiscover/autodiscover.json%3F@evil.com',
    ],
    ['encoded ? in the path', '/autodiscover/autodiscover.json%3f@evil.com/mapi/nspi/'],
    ['Email with a path', '/autodiscover/autodiscover.json?Email=a@b.c/../owa&Protocol=EWS'],
    [
      'ProxyNotShell, a deeper autodiscover.json',
      '/autodiscover/x/autodiscover.json?@evil.com/PowerShell/?&Email=autodiscover/autodiscover.json%3F@evil.com&Protocol=XYZ&FooProtocol=Powershell',
    ],
    ['OWASSRF (CVE-2022-41080)', '/owa/mastermailbox%40outlook.com/powershell?Email=x&X-Rps-CAT=VgEAVAdXaW5k'],
    ['a mailbox path into EWS', '/ews/x@evil.com/powershell/'],
    ['@ in a MAPI path', '/mapi/x@evil.com/emsmdb/'],
    ['ProxyLogon (CVE-2021-26855) via /ecp', '/ecp/y.js', { cookie: 'X-BEResource=localhost~1942062522' }],
    [
      'ProxyLogon via an allowed path',
      '/owa/auth/x.js',
      { cookie: 'X-AnonResource=true; X-AnonResource-Backend=localhost/ecp/default.flt?~3' },
    ],
  ];

  for (const creds of [null, alice]) {
    it.each(shapes)(`refuses %s ${creds ? 'with' : 'without'} credentials with a 4xx`, async (_name, path, headers) => {
      const before = h.standin.requests.length;
      const r = await send(h, path, { ...(creds ?? {}), headers: headers ?? {} });
      expect(r.status).toBeGreaterThanOrEqual(400);
      expect(r.status).toBeLessThan(500);
      expect(h.standin.requests.length).toBe(before);
      expect(r.status === 401 ? 'asked for credentials' : 'refused').toBe('refused');
    });
  }
});

describe('autodiscover.xml', () => {
  it('is authorized by the logon identity in the Authorization header, not the mailbox in the body', async () => {
    const body = '<Autodiscover><Request><EMailAddress>ceo@lab.test</EMailAddress></Request></Autodiscover>';
    const ok = await send(h, '/autodiscover/autodiscover.xml', {
      ...alice,
      method: 'POST',
      body,
      headers: { 'content-type': 'text/xml' },
    });
    expect(ok.status).toBe(200);
    const refused = await expectNotForwarded(h, () =>
      send(h, '/autodiscover/autodiscover.xml', { user: 'bob', password: USERS.bob.password, method: 'POST', body }),
    );
    expect(refused.status).toBe(403);
    expect(h.standin.seen((r) => r.user === 'bob')).toBe(0);
    expect(
      (await expectNotForwarded(h, () => send(h, '/autodiscover/autodiscover.xml', { method: 'POST', body }))).status,
    ).toBe(401);
  });
});
