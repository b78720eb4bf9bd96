/**
 * A real browser for tests: Debian's Chromium driven by playwright-core, which downloads no browser of
 * its own (research/owa-pool-ha.md §D). Each launch gets a new empty profile, ignores the test CA, and
 * talks to loopback only. Screenshots go to test-artifacts/screenshots/<test>/<NN-step>.png (git-ignored).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

/** The browser binary; `EXGATE_TEST_CHROMIUM` overrides Debian's `/usr/bin/chromium`. */
export const CHROMIUM = process.env.EXGATE_TEST_CHROMIUM ?? '/usr/bin/chromium';
const SCREENSHOTS = join(process.cwd(), 'test-artifacts', 'screenshots');

// Playwright passes --headless and, unless chromiumSandbox is set, --no-sandbox (Chromium refuses to
// run as root without it). The rest keep a test browser quiet: no GPU, no QUIC, and no call home.
const ARGS = [
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-domain-reliability',
  '--disable-client-side-phishing-detection',
  '--no-pings',
];

/** TestBrowser is one headless Chromium with one fresh profile. */
export interface TestBrowser {
  readonly context: BrowserContext;
  readonly page: Page;
  /** close stops the browser and removes its profile. Safe to call twice. */
  close(): Promise<void>;
}

/**
 * launchBrowser starts headless Chromium with a new empty user-data-dir; TLS errors are ignored (test CA).
 * `resolve`: host names the browser resolves to 127.0.0.1 (e.g. the gateway's external name), so that it
 * sends that name as SNI and Host, as a user's browser would.
 */
export async function launchBrowser(opts: { resolve?: readonly string[] } = {}): Promise<TestBrowser> {
  const rules = (opts.resolve ?? []).map((name) => `MAP ${name} 127.0.0.1`).join(', ');
  const profile = mkdtempSync(join(tmpdir(), 'exgate-chromium-'));
  let context: BrowserContext;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: rules ? [...ARGS, `--host-resolver-rules=${rules}`] : ARGS,
      ignoreHTTPSErrors: true,
      viewport: { width: 1024, height: 640 },
    });
  } catch (err) {
    rmSync(profile, { recursive: true, force: true });
    throw err;
  }
  const page = context.pages()[0] ?? (await context.newPage());
  let closing: Promise<void> | undefined;
  return {
    context,
    page,
    close: () => (closing ??= context.close().finally(() => rmSync(profile, { recursive: true, force: true }))),
  };
}

/** Screenshots numbers one test's steps and saves each as test-artifacts/screenshots/<test>/<NN-step>.png. */
export class Screenshots {
  readonly dir: string;
  #step = 0;

  /** The test's folder is emptied first, so it shows only the latest run. */
  constructor(test: string) {
    this.dir = join(SCREENSHOTS, slug(test));
    rmSync(this.dir, { recursive: true, force: true });
    mkdirSync(this.dir, { recursive: true });
  }

  /** shot saves the page as it looks now and returns the file's path. */
  async shot(page: Page, step: string): Promise<string> {
    this.#step += 1;
    const path = join(this.dir, `${String(this.#step).padStart(2, '0')}-${slug(step)}.png`);
    await page.screenshot({ path, fullPage: true });
    return path;
  }
}

function slug(text: string): string {
  return text
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-|-$/g, '');
}

/** testCertificate makes a throwaway self-signed P-256 certificate for 127.0.0.1 and localhost with openssl. */
export function testCertificate(): { cert: string; key: string } {
  const dir = mkdtempSync(join(tmpdir(), 'exgate-browser-cert-'));
  try {
    const [certPath, keyPath] = [join(dir, 'cert.pem'), join(dir, 'key.pem')];
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-subj',
        '/CN=localhost',
        '-addext',
        'subjectAltName=IP:127.0.0.1,DNS:localhost',
        '-days',
        '1',
        '-keyout',
        keyPath,
        '-out',
        certPath,
      ],
      { stdio: 'ignore' },
    );
    return { cert: readFileSync(certPath, 'utf8'), key: readFileSync(keyPath, 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
