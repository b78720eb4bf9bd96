/**
 * The browser door in a real browser: Debian's Chromium (playwright-core) → the gateway → the Exchange
 * stand-in's forms sign-in, users in the real Samba DC. It lives with the integration tests because it
 * needs their DC. Screenshots of every step: test-artifacts/screenshots/gateway-owa-*.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, inject, it } from 'vitest';
import { USERS } from '../helpers/ad-fixtures.js';
import { createUser, setGroupMember } from '../helpers/ad-admin.js';
import { launchBrowser, Screenshots, type TestBrowser } from '../helpers/browser.js';
import { EXTERNAL, startHarness, type Harness } from '../helpers/gateway-harness.js';

const ldapUrl = inject('ldapUrl');
const { alice, bob } = USERS;
const BAD_CREDENTIALS = "The user name or password you entered isn't correct";
/** logon.aspx showing its form (after Exchange's bounce without replaceCurrent=1, research A1). */
const SIGN_IN_PAGE = /\/owa\/auth\/logon\.aspx\?.*replaceCurrent=1/;

let h: Harness;
let browser: TestBrowser;
let site: string;

beforeAll(async () => {
  h = await startHarness({
    directory: 'ldap',
    forms: true,
    standin: { formsUsers: { [alice.sam]: alice.password, [bob.sam]: bob.password } },
    gateway: { cache: { groupTtlSeconds: 2 } },
  });
  site = `https://${EXTERNAL}:${h.port}`;
});
afterAll(async () => {
  await h?.close();
});
beforeEach(async () => {
  browser = await launchBrowser({ resolve: [EXTERNAL] });
});
afterEach(async () => {
  await browser?.close();
});

async function signIn(username: string, password: string): Promise<void> {
  const { page } = browser;
  await page.fill('#username', username);
  await page.fill('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('#signIn')]);
}

/** What reached Exchange, without the sign-in page's own files. */
const reached = (pred: (r: { method: string; url: string; user: string | null }) => boolean) =>
  h.standin.requests.filter((r) => !r.url.startsWith('/owa/auth/15') && pred(r));

describe('Outlook on the web through the gateway, in Chromium', () => {
  it('alice: a wrong password, then her inbox; sign-out, the back button and a reload lead to the sign-in page', async () => {
    const shots = new Screenshots('gateway-owa alice');
    const { page } = browser;
    await page.goto(`${site}/owa/`);
    await page.waitForURL(SIGN_IN_PAGE);
    await shots.shot(page, 'sign-in page');

    await signIn(alice.sam, 'not-her-password');
    await page.waitForURL(SIGN_IN_PAGE);
    expect(page.url()).toContain('reason=2');
    expect(await page.textContent('#signInErrorDiv')).toContain(BAD_CREDENTIALS);
    expect(reached((r) => r.method === 'POST')).toEqual([]); // the gateway answered the wrong password
    await shots.shot(page, 'wrong password');

    await signIn(`LAB\\${alice.sam}`, alice.password);
    expect(page.url()).toBe(`${site}/owa/`);
    expect(await page.textContent('#title')).toBe('Inbox — LAB\\alice');
    const gateway = (await browser.context.cookies()).find((c) => c.name === 'exgate-session');
    expect(gateway).toMatchObject({ httpOnly: true, secure: true, sameSite: 'Lax', path: '/' });
    await shots.shot(page, 'inbox');

    await Promise.all([page.waitForURL(/\/owa\/auth\/logoff\.aspx/), page.click('#signOut')]);
    expect(await page.textContent('#title')).toBe('You have signed out of Outlook');
    await shots.shot(page, 'signed out');

    await page.goBack();
    await page.waitForURL(SIGN_IN_PAGE);
    expect(await page.content()).not.toContain('Inbox');
    await shots.shot(page, 'back button');
    await page.reload();
    await page.waitForURL(SIGN_IN_PAGE);
    await page.goto(`${site}/owa/`);
    await page.waitForURL(SIGN_IN_PAGE);
    expect(await page.content()).not.toContain('Inbox');
    await shots.shot(page, 'reload');
  });

  it('bob: the "not available from outside" page, and Exchange never saw his form', async () => {
    const shots = new Screenshots('gateway-owa bob');
    const { page } = browser;
    const before = h.standin.requests.length;
    await page.goto(`${site}/owa/`);
    await page.waitForURL(SIGN_IN_PAGE);
    await signIn(bob.sam, bob.password);
    expect(await page.textContent('h1')).toContain('Outlook on the web is not available to this account from outside');
    await shots.shot(page, 'not available');
    expect(h.standin.requests.slice(before).filter((r) => r.method === 'POST' || r.user !== null)).toEqual([]);
    expect(await h.record((x) => x.user === 'LAB\\bob' && x.status === 403)).toMatchObject({ reason: 'not-allowed' });
  });

  it('a user removed from the group in AD is out within groupTtlSeconds', async () => {
    const shots = new Screenshots('gateway-owa removed from the group');
    const u = await createUser(ldapUrl, `br${randomBytes(3).toString('hex')}`, 'Browser-Passw0rd!', [
      'AllowExternalAccess',
    ]);
    h.standin.addFormsUser(u.sam, u.password);
    const { page } = browser;
    await page.goto(`${site}/owa/`);
    await page.waitForURL(SIGN_IN_PAGE);
    await signIn(u.sam, u.password);
    expect(await page.textContent('#title')).toBe(`Inbox — LAB\\${u.sam}`);
    await shots.shot(page, 'inbox');
    await setGroupMember(ldapUrl, 'delete', 'AllowExternalAccess', u.dn);
    await new Promise((r) => setTimeout(r, 2500)); // cache.groupTtlSeconds: 2
    await page.reload();
    await page.waitForURL(SIGN_IN_PAGE);
    await shots.shot(page, 'after removal');
    await signIn(u.sam, u.password);
    expect(await page.textContent('h1')).toContain('not available to this account from outside');
    await shots.shot(page, 'sign-in again');
  });
});
