// A real browser against the Exchange stand-in alone (HTTPS, test certificate): OWA's forms sign-in as a user
// sees it. Screenshots of every step land in test-artifacts/screenshots/standin-owa-*/.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startExchangeStandin, type ExchangeStandin } from '../../src/standin/exchange.js';
import { launchBrowser, Screenshots, testCertificate, type TestBrowser } from '../helpers/browser.js';

const PASSWORD = 'Alice-Browser-1';
const FBA = ['cadata', 'cadataIV', 'cadataKey', 'cadataSig', 'cadataTTL'];
const BAD_CREDENTIALS = "The user name or password you entered isn't correct";
/** logon.aspx showing its form: the bounce without replaceCurrent=1 has already run (research A1). */
const SIGN_IN_PAGE = /\/owa\/auth\/logon\.aspx\?.*replaceCurrent=1/;

let standin: ExchangeStandin;
let browser: TestBrowser;

beforeAll(async () => {
  standin = await startExchangeStandin({ tls: testCertificate(), formsUsers: { alice: PASSWORD } });
});
afterAll(async () => {
  await standin?.close();
});
beforeEach(async () => {
  standin.reset();
  browser = await launchBrowser();
});
afterEach(async () => {
  await browser?.close();
});

async function fbaCookies(): Promise<string[]> {
  return (await browser.context.cookies())
    .filter((c) => c.name.startsWith('cadata'))
    .map((c) => c.name)
    .sort();
}

async function signIn(username: string, password: string): Promise<void> {
  const { page } = browser;
  await page.fill('#username', username);
  await page.fill('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('#signIn')]);
}

/** What reached the stand-in, without the sign-in page's own resources. */
function reached(): string[] {
  return standin.requests
    .filter((r) => !r.url.startsWith('/owa/auth/15'))
    .map((r) => `${r.method} ${r.url.split('?')[0]} ${r.user ?? '-'}`);
}

describe('OWA forms sign-in in Chromium, against the stand-in', () => {
  it('signs in after a wrong password, shows the inbox, and signs out for good in this browser', async () => {
    const shots = new Screenshots('standin-owa sign-in and sign-out');
    const { page } = browser;

    await page.goto(`${standin.url}/owa/`);
    await page.waitForURL(SIGN_IN_PAGE);
    expect(page.url()).toContain('reason=0');
    expect(await page.title()).toBe('Outlook');
    await expect(page.isVisible('#username')).resolves.toBe(true);
    await shots.shot(page, 'sign-in page');

    await signIn('alice', 'not-her-password');
    await page.waitForURL(SIGN_IN_PAGE);
    expect(page.url()).toContain('reason=2');
    expect(await page.textContent('#signInErrorDiv')).toContain(BAD_CREDENTIALS);
    expect(await fbaCookies()).toEqual([]);
    await shots.shot(page, 'wrong password');

    await signIn('LAB\\alice', PASSWORD);
    expect(page.url()).toBe(`${standin.url}/owa/`);
    expect(await page.textContent('#title')).toBe('Inbox — LAB\\alice');
    expect(await page.locator('ul.messages li').count()).toBe(3);
    const cookies = await browser.context.cookies();
    expect(cookies.filter((c) => FBA.includes(c.name)).every((c) => c.httpOnly && c.secure && c.path === '/')).toBe(
      true,
    );
    expect(await fbaCookies()).toEqual(FBA);
    expect(cookies.find((c) => c.name === 'X-OWA-CANARY')?.httpOnly).toBe(false);
    await shots.shot(page, 'inbox');

    await Promise.all([page.waitForURL(/\/owa\/auth\/logoff\.aspx\?Cmd=logoff&src=exch$/), page.click('#signOut')]);
    expect(await page.textContent('#title')).toBe('You have signed out of Outlook');
    expect(await fbaCookies()).toEqual([]);
    await shots.shot(page, 'signed out');

    standin.reset();
    await page.goBack();
    await page.waitForURL(SIGN_IN_PAGE);
    expect(await page.isVisible('#logonForm')).toBe(true);
    expect(await page.content()).not.toContain('Inbox');
    await shots.shot(page, 'back button');
    // The back button asked "Exchange" again, without cookies, and was sent to the sign-in page.
    expect(reached()).toEqual(['GET /owa/ -', 'GET /owa/auth/logon.aspx -', 'GET /owa/auth/logon.aspx -']);

    await page.reload();
    await page.waitForURL(SIGN_IN_PAGE);
    expect(await page.isVisible('#logonForm')).toBe(true);
    await page.goto(`${standin.url}/owa/`);
    await page.waitForURL(SIGN_IN_PAGE);
    expect(await page.content()).not.toContain('Inbox');
    await shots.shot(page, 'reload');
  });

  it('reaches the EAC with the same sign-in', async () => {
    const shots = new Screenshots('standin-owa ecp');
    const { page } = browser;
    await page.goto(`${standin.url}/ecp/`);
    await page.waitForURL(SIGN_IN_PAGE);
    expect(await page.title()).toBe('Exchange admin center');
    await shots.shot(page, 'sign-in page');
    await signIn('alice@lab.test', PASSWORD);
    expect(page.url()).toBe(`${standin.url}/ecp/`);
    expect(await page.textContent('#title')).toBe('Exchange admin center — LAB\\alice');
    await shots.shot(page, 'eac');
    expect(reached()).toContain('POST /owa/auth.owa alice@lab.test');
  });
});
