#!/usr/bin/env node
// Makes sure the system tools the integration tests need are installed (runs as `npm test`'s pretest).
//
// The tests start a throwaway Samba AD domain controller (test/helpers/samba.ts), which needs:
//   samba, samba-tool  -> Debian packages samba-ad-dc (pulls in samba, python3-samba, ...) and
//                         samba-ad-provision (the schema files `samba-tool domain provision` reads)
//   openssl            -> to create the test CA and the DC's TLS certificate
// and test/unit/monitoring.test.ts checks deploy/prometheus-rules.yml with
//   promtool           -> Debian package prometheus (/usr/bin/promtool)
// and the browser tests (test/browser/, test/helpers/browser.ts) drive Debian's Chromium with playwright-core,
// which downloads no browser of its own:
//   /usr/bin/chromium  -> Debian package chromium (or set EXGATE_TEST_CHROMIUM to another Chromium binary)
// and test/integration/impacket-rpch.test.ts runs a third-party Outlook Anywhere client:
//   impacket           -> Debian package python3-impacket (for /usr/bin/python3)
// and test/integration/proxy-protocol.test.ts puts a layer-4 balancer in front of two gateways:
//   /usr/sbin/haproxy  -> Debian package haproxy
// and the shared-state tests (test/helpers/redis.ts) start a real Redis, its replica and three Sentinels:
//   redis-server, redis-sentinel -> Debian packages redis-server and redis-sentinel (their packaged services
//                         listen on 6379/26379; the tests use other loopback ports)
//
// When something is missing and we are root on a Debian/Ubuntu machine, install it with apt-get.
// When we are not root, print what to install and exit 1. When everything is present, do nothing (fast).
//
// Note for systemd hosts: installing samba-ad-dc may enable the packaged smbd/nmbd/samba-ad-dc services.
// samba-ad-dc only runs if /etc/samba/smb.conf is a DC config; if it does run it holds port 389 and the
// tests fail with a clear "port 389 is already in use" error; the prometheus package's service likewise
// holds port 9090, the admin listener's default (tests use port 0). (In Debian containers policy-rc.d stops
// services from starting at all.)
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';

/** Directory samba-tool needs for provisioning; shipped by samba-ad-provision. */
const PROVISION_DATA = '/usr/share/samba/setup/provision.ldif';
/** The browser test/helpers/browser.ts starts. */
const CHROMIUM = process.env.EXGATE_TEST_CHROMIUM ?? '/usr/bin/chromium';

/** Finds an executable on PATH, also looking in the sbin dirs that are often missing for non-root users. */
function which(name) {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  return dirs
    .filter(Boolean)
    .map((d) => join(d, name))
    .find((p) => existsSync(p));
}

/** Returns the Debian packages that provide what is missing. */
function missingPackages() {
  const missing = new Set();
  if (!which('samba') || !which('samba-tool')) missing.add('samba-ad-dc');
  if (!existsSync(PROVISION_DATA)) missing.add('samba-ad-provision');
  if (missing.has('samba-ad-dc')) missing.add('samba-ad-provision'); // always needed together
  if (!which('openssl')) missing.add('openssl');
  if (!which('promtool')) missing.add('prometheus');
  if (!existsSync(CHROMIUM)) missing.add('chromium');
  if (spawnSync('/usr/bin/python3', ['-c', 'import impacket']).status !== 0) missing.add('python3-impacket');
  if (!existsSync('/usr/sbin/haproxy')) missing.add('haproxy');
  if (!which('redis-server')) missing.add('redis-server');
  if (!which('redis-sentinel')) missing.add('redis-sentinel');
  return [...missing];
}

function fail(message) {
  console.error(`\n[ensure-test-deps] ${message}\n`);
  process.exit(1);
}

/** Runs a command with inherited stdio, printing it first; exits with a clear message on failure. */
function run(cmd, args, env = process.env) {
  console.log(`[ensure-test-deps] $ ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { stdio: 'inherit', env });
  if (r.error) fail(`could not run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) {
    fail(
      `\`${cmd} ${args.join(' ')}\` failed (${r.signal ? `signal ${r.signal}` : `exit code ${r.status}`}); see the output above.`,
    );
  }
}

const packages = missingPackages();
const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;

if (packages.length === 0) {
  if (!isRoot) {
    console.warn(
      '[ensure-test-deps] warning: not running as root; the Samba AD integration tests need root ' +
        '(samba-tool provisioning, ports 389/636).',
    );
  }
  process.exit(0);
}

const installCmd = `apt-get install -y --no-install-recommends ${packages.join(' ')}`;
if (!isRoot) {
  fail(
    `Missing test dependencies: ${packages.join(', ')}.\n` +
      '  The integration tests run a throwaway Samba AD domain controller, the browser tests Chromium;\n' +
      '  they need these Debian packages.\n' +
      `  Install them as root:  apt-get update && DEBIAN_FRONTEND=noninteractive ${installCmd}\n` +
      '  (and run the tests as root: provisioning and ports 389/636 require it).',
  );
}
if (!which('apt-get')) {
  fail(
    `Missing test dependencies: ${packages.join(', ')}, and apt-get is not available. ` +
      "Install Samba (samba, samba-tool with the AD DC provisioning data), openssl, Prometheus's promtool " +
      'and Chromium with your package manager.',
  );
}

console.log(`[ensure-test-deps] installing missing test dependencies: ${packages.join(', ')}`);
const started = Date.now();
const aptEnv = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
run('apt-get', ['update'], aptEnv);
run('apt-get', ['install', '-y', '--no-install-recommends', ...packages], aptEnv);

const still = missingPackages();
if (still.length > 0) fail(`apt-get finished, but these are still missing: ${still.join(', ')}.`);
console.log(`[ensure-test-deps] done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
