// Table tests of how the gateway reads Exchange's sign-in form (src/auth/sign-in-form.ts): what it reads
// must be what Exchange reads, or the form is refused.
import { describe, expect, it } from 'vitest';
import {
  formDestination,
  isAnonymousPage,
  isSignInPost,
  isSignOut,
  logonUrl,
  parseSignInForm,
} from '../../src/auth/sign-in-form.js';

const FORM = 'application/x-www-form-urlencoded';
const DEST = 'destination=https%3A%2F%2Fmail.lab.test%2Fowa%2F&flags=4&forcedownlevel=0';
const form = (body: string, type: string | undefined = FORM) => parseSignInForm(Buffer.from(body, 'utf8'), type);

describe('parseSignInForm', () => {
  it.each([
    [`${DEST}&username=alice&password=pw`, 'alice', 'pw'],
    [`${DEST}&username=LAB%5Calice&password=p%40ss+word&passwordText=&isUtf8=1`, 'LAB\\alice', 'p@ss word'],
    [`${DEST}&username=alice%40lab.test&password=%E2%82%AC%3A%26x`, 'alice@lab.test', '€:&x'],
    [`${DEST}&USERNAME=alice&Password=pw`, 'alice', 'pw'], // ASP.NET form keys are case-insensitive
    [`${DEST}&username=alice&password=`, 'alice', ''], // empty: the authenticator says bad-credentials
  ])('reads %s', (body, username, password) => {
    const r = form(body);
    expect(r).toEqual({ ok: true, form: { username, password, destination: 'https://mail.lab.test/owa/' } });
  });

  it.each([
    [`${DEST}&username=alice&username=bob&password=pw`, 'username appears twice'],
    [`${DEST}&username=alice&password=a&password=b`, 'password appears twice'],
    [`${DEST}&destination=x&username=alice&password=pw`, 'destination appears twice'],
    [`${DEST}&username=%u0061lice&password=pw`, 'username of the sign-in form is badly encoded'],
    [`${DEST}&username=alice&password=%zz`, 'password of the sign-in form is badly encoded'],
    [`${DEST}&username=alice&password=%C3%28`, 'password of the sign-in form is badly encoded'],
    [`${DEST}&username=alice&password=50%`, 'password of the sign-in form is badly encoded'],
    [`${DEST}&password=pw`, 'has no username'],
    ['flags=4&username=a&password=b', 'has no destination'],
    ['destination=x&username=a&password=b', 'has no flags'],
    [`${DEST}&user%6eame=alice&username=bob&password=pw`, 'username appears twice'], // encoded name
  ])('refuses %s', (body, why) => {
    const r = form(body);
    expect(r.ok).toBe(false);
    expect(r.ok ? '' : r.why).toContain(why);
  });

  it('refuses a form that is not urlencoded, or not UTF-8', () => {
    expect(form(`${DEST}&username=a&password=b`, 'multipart/form-data; boundary=x').ok).toBe(false);
    expect(parseSignInForm(Buffer.from(`${DEST}&username=a&password=b`), undefined).ok).toBe(false);
    expect(form(`${DEST}&username=a&password=b`, 'application/x-www-form-urlencoded; charset=UTF-8').ok).toBe(true);
    expect(form(`${DEST}&username=a&password=b`, 'application/x-www-form-urlencoded;charset="utf-8"').ok).toBe(true);
    // ASP.NET decodes with the named charset: a UTF-16 set of fields Exchange would read, the gateway not.
    for (const type of ['; charset=utf-16', '; charset=utf-7', '; charset=iso-8859-1', '; foo=bar', ', text/plain'])
      expect(form(`${DEST}&username=a&password=b`, `application/x-www-form-urlencoded${type}`).ok).toBe(false);
    const latin1 = Buffer.concat([Buffer.from(`${DEST}&username=a&password=`), Buffer.from([0xe9])]);
    expect(parseSignInForm(latin1, FORM).ok).toBe(false);
  });
});

describe('formDestination', () => {
  it.each([
    ['https://mail.lab.test/owa/', 'mail.lab.test', 'owa', 'https://mail.lab.test/owa/'],
    ['https://mail.lab.test/ecp/', 'mail.lab.test', 'ecp', 'https://mail.lab.test/ecp/'],
    [
      'https://MAIL.lab.test/ECP/?ExchClientVer=15',
      'mail.lab.test',
      'ecp',
      'https://mail.lab.test/ECP/?ExchClientVer=15',
    ],
    ['https://mail.lab.test/ecpx/', 'mail.lab.test', 'owa', 'https://mail.lab.test/ecpx/'],
    ['https://evil.test/ecp/', 'mail.lab.test', 'owa', 'https://mail.lab.test/owa/'],
    ['http://mail.lab.test/ecp/', 'mail.lab.test', 'owa', 'https://mail.lab.test/owa/'],
    ['https://u:p@mail.lab.test/ecp/', 'mail.lab.test', 'owa', 'https://mail.lab.test/owa/'],
    ['/ecp/', 'mail.lab.test', 'owa', 'https://mail.lab.test/owa/'],
    ['', 'mail.lab.test', 'owa', 'https://mail.lab.test/owa/'],
    ['https://127.0.0.1:8443/owa/#path=/mail', '127.0.0.1:8443', 'owa', 'https://127.0.0.1:8443/owa/#path=/mail'],
  ])('%s on %s → %s', (destination, host, service, url) => {
    expect(formDestination(destination, host)).toEqual({ service, url });
  });
});

describe('the sign-in paths', () => {
  it.each([
    ['GET', '/owa/auth/logon.aspx', true],
    ['HEAD', '/owa/auth/logoff.aspx', true],
    ['GET', '/owa/auth/15.2.1118/themes/resources/segoeui-regular.woff', true],
    ['GET', '/owa/auth/15.2.1118/scripts/premium/flogon.js', true],
    ['POST', '/owa/auth/logon.aspx', false],
    ['GET', '/owa/auth/15.2/x.aspx', false],
    ['GET', '/owa/auth.owa', false],
    ['GET', '/owa/', false],
    ['GET', '/owa/service.svc', false],
    ['GET', '/ecp/auth/logon.aspx', false],
    ['GET', '/owa/auth/x.aspx;.js', false],
    ['GET', '/owa/auth/x.aspx%3b.js', false],
    ['GET', '/owa/auth/~x.js', false],
    ['GET', '/ecp/y.js', false],
    ['GET', '/owa/auth/logon.aspx/x.js', false],
    ['GET', '/owa/auth/x.ashx/y.css', false],
    ['GET', '/owa/auth/ext.owa/y.js', false],
    ['GET', '/owa/auth//x.js', false],
    ['GET', '/owa/auth/15.2.1118.26/themes/resources/favicon.ico', true],
    ['GET', '/owa/auth/current/scripts/x.min.js', true],
  ])('%s %s anonymous: %s', (method, path, anonymous) => {
    expect(isAnonymousPage(method, path)).toBe(anonymous);
  });

  it('knows the form and the sign-out', () => {
    expect(isSignInPost('POST', '/owa/auth.owa')).toBe(true);
    expect(isSignInPost('GET', '/owa/auth.owa')).toBe(false);
    expect(isSignInPost('POST', '/owa/auth/owaauth.dll')).toBe(true);
    expect(isSignInPost('POST', '/owa/anything/auth.owa')).toBe(true);
    expect(isSignInPost('POST', '/ecp/auth.owa')).toBe(true);
    expect(isSignInPost('POST', '/owa/auth.owax')).toBe(false);
    expect(isSignOut('/owa/logoff.owa')).toBe(true);
    expect(isSignOut('/ecp/logoff.aspx')).toBe(true);
    expect(isSignOut('/owa/')).toBe(false);
  });

  it('builds Exchange sign-in URLs', () => {
    expect(logonUrl('mail.lab.test', 'https://mail.lab.test/owa/#a=b&c', 2, true)).toBe(
      'https://mail.lab.test/owa/auth/logon.aspx?replaceCurrent=1&reason=2&url=https%3A%2F%2Fmail.lab.test%2Fowa%2F%23a%3Db%26c',
    );
    expect(logonUrl('mail.lab.test', 'https://mail.lab.test/owa/?x=1', 0)).toBe(
      'https://mail.lab.test/owa/auth/logon.aspx?url=https%3A%2F%2Fmail.lab.test%2Fowa%2F%3Fx%3D1&reason=0',
    );
  });
});
