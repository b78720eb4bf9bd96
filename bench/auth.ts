/**
 * Authentication cost, side by side with its baselines in one run (issue 3):
 *
 * 1. Cached authentication per request (µs of CPU, in process): the Authenticator answering from
 *    its caches, against the bare header parse it cannot avoid.
 * 2. Cold authentication latency against a real Samba AD DC (p50, p99): a plain LDAP bind as the
 *    user ("without the gateway": what any LDAP check costs at least), against a full HTTPS
 *    request through the gateway with every cache off (search, bind on a fresh connection, state
 *    and group lookups, forward to the stand-in and back).
 *
 * Rounds alternate between the measured thing and its baseline, so load on the machine hits both.
 */
import { randomBytes, scryptSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client as LdapClient } from 'ldapts';
import { Client } from 'undici';
import { stringify } from 'yaml';
import { Authenticator } from '../src/authenticate.js';
import { startGateway } from '../src/commands/serve.js';
import { parseBasic, parseLogon } from '../src/credentials.js';
import { FileDirectory } from '../src/directory/file.js';
import { startExchangeStandin } from '../src/standin/exchange.js';
import { DOMAIN, SERVICE_ACCOUNT, USERS } from '../test/helpers/ad-fixtures.js';
import { startSamba } from '../test/helpers/samba.js';
import { fmt, median, summarize, table } from './stats.js';

const domain = { netbios: 'LAB', upnSuffixes: ['lab.test'] };

/** µs per call of `fn`, over `n` calls (after a warm-up). */
async function perCall(n: number, fn: () => unknown | Promise<unknown>): Promise<number> {
  for (let i = 0; i < Math.min(2000, n / 10); i++) await fn();
  const t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await fn();
  return Number(process.hrtime.bigint() - t) / 1000 / n;
}

export async function cachedAuthBench(rounds = 5, n = 100_000): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'exgate-bench-'));
  try {
    const salt = randomBytes(16);
    const hash = scryptSync('Passw0rd!', salt, 32, { N: 1024, r: 8, p: 1 });
    writeFileSync(join(dir, 'users.yaml'), stringify({
      users: { alice: { password: `scrypt$1024$8$1$${salt.toString('base64')}$${hash.toString('base64')}` } },
      groups: { AllowExternalAccess: { members: ['alice'] } },
    }));
    const directory = FileDirectory.load({ type: 'file', path: join(dir, 'users.yaml'), baseDn: DOMAIN.baseDn, netbiosDomain: 'LAB', upnSuffixes: ['lab.test'] });
    const auth = new Authenticator({
      directory, domain,
      cache: { max: 10_000, authTtlSeconds: 3600, groupTtlSeconds: 3600, negativeTtlSeconds: 30, staleIfErrorSeconds: 0 },
      lockout: { threshold: 5, windowSeconds: 1800, sourceAccounts: 10, sourceFailures: 50, familiarSeconds: 1_209_600, max: 10_000 },
    });
    const groupDns = [(await directory.resolveGroup('AllowExternalAccess'))!.dn.toLowerCase()];
    const header = 'Basic ' + Buffer.from('alice:Passw0rd!').toString('base64');
    const request = { header, source: '198.51.100.7', groupDns, policyVersion: 'bench' };
    const first = await auth.authenticate(request);
    if (!first.ok) throw new Error(`bench user does not authenticate: ${first.reason}`);
    const cached: number[] = [];
    const parseOnly: number[] = [];
    for (let r = 0; r < rounds; r++) {
      parseOnly.push(await perCall(n, () => { const c = parseBasic(header); if (c && c !== 'malformed') parseLogon(c.user, domain); }));
      cached.push(await perCall(n, () => auth.authenticate(request)));
    }
    const c = median(cached);
    const p = median(parseOnly);
    return table(['cached authentication (in process, median of rounds)', 'µs per request'], [
      ['baseline: parse the Basic header and the logon name', fmt(p, 2)],
      ['Authenticator, all caches warm (HMAC key, lockout check, 3 lookups)', fmt(c, 2)],
      ['cost of the cached check over the baseline', fmt(c - p, 2)],
    ]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function coldAuthBench(rounds = 3, perRound = 100): Promise<string> {
  const samba = await startSamba({});
  const dir = mkdtempSync(join(tmpdir(), 'exgate-bench-'));
  const standin = await startExchangeStandin({});
  try {
    writeFileSync(join(dir, 'bind-password'), SERVICE_ACCOUNT.password);
    writeFileSync(join(dir, 'policy.yaml'), 'rules:\n  - id: outlook\n    services: [owa]\n    allow: { groups: [AllowExternalAccess] }\n');
    writeFileSync(join(dir, 'gateway.yaml'), stringify({
      listen: { host: '127.0.0.1', port: 0 },
      tls: { cert: 'gw.crt', key: 'gw.key', selfSigned: true },
      names: { external: ['mail.lab.test'] },
      upstream: { url: standin.url },
      directory: {
        type: 'ldap', url: samba.ldapUrl, bindDn: SERVICE_ACCOUNT.dn, bindPasswordFile: 'bind-password',
        baseDn: DOMAIN.baseDn, netbiosDomain: 'LAB', upnSuffixes: ['lab.test'],
      },
      policyFile: 'policy.yaml',
      log: { level: 'warn', access: join(dir, 'access.log') },
      cache: { authTtlSeconds: 0, groupTtlSeconds: 0, negativeTtlSeconds: 0 },
      lockout: { sourceAccounts: 1_000_000, sourceFailures: 1_000_000 },
    }));
    const gw = await startGateway(join(dir, 'gateway.yaml'));
    const client = new Client(`https://127.0.0.1:${gw.address.port}`, { connect: { rejectUnauthorized: false, servername: 'mail.lab.test' } });
    const users = [USERS.alice, USERS.carol, USERS.zoe, USERS.grace];
    const direct: number[] = [];
    const through: number[] = [];
    try {
      for (let r = 0; r < rounds; r++) {
        for (let i = 0; i < perRound; i++) {
          const u = users[i % users.length]!;
          let t = performance.now();
          const ldap = new LdapClient({ url: samba.ldapUrl, connectTimeout: 3000, timeout: 5000 });
          await ldap.bind(u.dn, u.password);
          await ldap.unbind();
          direct.push(performance.now() - t);
          t = performance.now();
          const res = await client.request({ path: '/owa/', method: 'GET', headers: { host: 'mail.lab.test', authorization: 'Basic ' + Buffer.from(`${u.sam}:${u.password}`).toString('base64') } });
          await res.body.dump();
          if (res.statusCode !== 200) throw new Error(`gateway answered ${res.statusCode}`);
          through.push(performance.now() - t);
        }
      }
    } finally {
      await client.close();
      await gw.close();
    }
    const d = summarize(direct);
    const g = summarize(through);
    return table(['cold authentication against Samba AD (ms)', 'n', 'p50', 'p99'], [
      ['without the gateway: new LDAP connection + bind as the user', d.n, fmt(d.p50, 2), fmt(d.p99, 2)],
      ['through the gateway, caches off: HTTPS request, search + bind + state + groups, forward', g.n, fmt(g.p50, 2), fmt(g.p99, 2)],
    ]);
  } finally {
    await standin.close();
    await samba.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
