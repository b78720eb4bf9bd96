/**
 * Authentication cost, side by side with its baselines in one run (issue 3):
 *
 * 1. Cached authentication per request (µs of CPU, in process): the Authenticator answering from
 *    its caches, against the bare header parse it cannot avoid.
 * 2. Latency against a real Samba AD DC (p50, p99), beside its baselines: an HTTPS request
 *    straight to the Exchange stand-in, a plain LDAP bind and an LDAPS bind as the user (what any
 *    check costs at least), then the gateway with its caches warm and with every cache off (LDAPS
 *    search, bind on a fresh connection, state and group lookups, forward to the stand-in).
 *
 * Rounds alternate between the measured thing and its baseline, so load on the machine hits both.
 */
import { randomBytes, scryptSync } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client as LdapClient } from 'ldapts';
import { Client } from 'undici';
import { stringify } from 'yaml';
import { authenticateBasic } from '../src/auth/front-ends.js';
import { Authenticator } from '../src/auth/authenticate.js';
import { startGateway } from '../src/runtime/start.js';
import { parseBasic, parseLogon } from '../src/auth/credentials.js';
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
    writeFileSync(
      join(dir, 'users.yaml'),
      stringify({
        users: { alice: { password: `scrypt$1024$8$1$${salt.toString('base64')}$${hash.toString('base64')}` } },
        groups: { AllowExternalAccess: { members: ['alice'] } },
      }),
    );
    const directory = FileDirectory.load({
      type: 'file',
      path: join(dir, 'users.yaml'),
      baseDn: DOMAIN.baseDn,
      netbiosDomain: 'LAB',
      upnSuffixes: ['lab.test'],
    });
    const auth = new Authenticator({
      directory,
      domain,
      cache: {
        max: 10_000,
        authTtlSeconds: 3600,
        groupTtlSeconds: 3600,
        negativeTtlSeconds: 30,
        staleIfErrorSeconds: 0,
      },
      lockout: {
        threshold: 5,
        windowSeconds: 1800,
        sourceAccounts: 10,
        sourceFailures: 50,
        familiarSeconds: 1_209_600,
        max: 10_000,
      },
    });
    const groupDns = [(await directory.resolveGroup('AllowExternalAccess'))!.dn.toLowerCase()];
    const header = 'Basic ' + Buffer.from('alice:Passw0rd!').toString('base64');
    const request = { source: '198.51.100.7', groupDns, policyVersion: 'bench' };
    const first = await authenticateBasic(auth, header, request);
    if (!first.ok) throw new Error(`bench user does not authenticate: ${first.reason}`);
    const cached: number[] = [];
    const parseOnly: number[] = [];
    const proven: number[] = [];
    const onConnection = { ...request, connection: {} };
    await authenticateBasic(auth, header, onConnection);
    for (let r = 0; r < rounds; r++) {
      parseOnly.push(
        await perCall(n, () => {
          const c = parseBasic(header);
          if (c && c !== 'malformed') parseLogon(c.user, domain);
        }),
      );
      cached.push(await perCall(n, () => authenticateBasic(auth, header, request)));
      proven.push(await perCall(n, () => authenticateBasic(auth, header, onConnection)));
    }
    const c = median(cached);
    const p = median(parseOnly);
    return table(
      ['cached authentication (in process, median of rounds)', 'µs per request'],
      [
        ['baseline: parse the Basic header and the logon name', fmt(p, 2)],
        ['Authenticator, all caches warm (HMAC key, lockout check, 3 lookups)', fmt(c, 2)],
        ['cost of the cached check over the baseline', fmt(c - p, 2)],
        ['the same header again on one connection (proven on that connection)', fmt(median(proven), 2)],
      ],
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function coldAuthBench(rounds = 3, perRound = 100): Promise<string> {
  const samba = await startSamba({});
  const dir = mkdtempSync(join(tmpdir(), 'exgate-bench-'));
  const cert = selfSignedPem(dir, 'exchange-be.lab.test');
  const standin = await startExchangeStandin({ tls: cert });
  try {
    writeFileSync(join(dir, 'bind-password'), SERVICE_ACCOUNT.password);
    writeFileSync(join(dir, 'upstream-ca.pem'), cert.cert);
    writeFileSync(
      join(dir, 'policy.yaml'),
      'rules:\n  - id: outlook\n    services: [owa]\n    allow: { groups: [AllowExternalAccess] }\n',
    );
    const gatewayYaml = (cache: object) =>
      stringify({
        listen: { host: '127.0.0.1', port: 0 },
        tls: { cert: 'gw.crt', key: 'gw.key', selfSigned: true },
        names: { external: ['mail.lab.test'] },
        upstream: { url: standin.url, ca: 'upstream-ca.pem', servername: 'exchange-be.lab.test' },
        directory: {
          type: 'ldap',
          url: samba.ldapsUrl,
          ca: samba.caFile,
          bindDn: SERVICE_ACCOUNT.dn,
          bindPasswordFile: 'bind-password',
          baseDn: DOMAIN.baseDn,
          netbiosDomain: 'LAB',
          upnSuffixes: ['lab.test'],
        },
        policyFile: 'policy.yaml',
        log: { level: 'warn', access: join(dir, 'access.log') },
        cache,
        lockout: { sourceAccounts: 1_000_000, sourceFailures: 1_000_000 },
      });
    writeFileSync(
      join(dir, 'cold.yaml'),
      gatewayYaml({ authTtlSeconds: 0, groupTtlSeconds: 0, negativeTtlSeconds: 0 }),
    );
    writeFileSync(join(dir, 'warm.yaml'), gatewayYaml({ authTtlSeconds: 3600, groupTtlSeconds: 3600 }));
    const cold = await startGateway(join(dir, 'cold.yaml'), { appStream: { write: () => {} } });
    const warm = await startGateway(join(dir, 'warm.yaml'), { appStream: { write: () => {} } });
    const connect = { rejectUnauthorized: false, servername: 'mail.lab.test' };
    const clients = {
      direct: new Client(standin.url, { connect: { rejectUnauthorized: false, servername: 'exchange-be.lab.test' } }),
      cold: new Client(`https://127.0.0.1:${cold.address.port}`, { connect }),
      warm: new Client(`https://127.0.0.1:${warm.address.port}`, { connect }),
    };
    const users = [USERS.alice, USERS.carol, USERS.zoe, USERS.grace];
    const samples: Record<string, number[]> = { https: [], ldap: [], ldaps: [], warm: [], cold: [] };
    const get = async (c: Client, u: (typeof users)[number]) => {
      const res = await c.request({
        path: '/owa/',
        method: 'GET',
        headers: {
          host: 'mail.lab.test',
          authorization: 'Basic ' + Buffer.from(`${u.sam}:${u.password}`).toString('base64'),
        },
      });
      await res.body.dump();
      if (res.statusCode !== 200) throw new Error(`answered ${res.statusCode}`);
    };
    const bind = async (url: string, u: (typeof users)[number]) => {
      const ldap = new LdapClient({
        url,
        connectTimeout: 3000,
        timeout: 5000,
        tlsOptions: url.startsWith('ldaps') ? { ca: samba.caPem } : undefined,
      });
      await ldap.bind(u.dn, u.password);
      await ldap.unbind();
    };
    const time = async (into: number[], fn: () => Promise<void>) => {
      const t = performance.now();
      await fn();
      into.push(performance.now() - t);
    };
    try {
      for (let r = 0; r < rounds; r++) {
        for (let i = 0; i < perRound; i++) {
          const u = users[i % users.length]!;
          await time(samples.https!, () => get(clients.direct, u));
          await time(samples.ldap!, () => bind(samba.ldapUrl, u));
          await time(samples.ldaps!, () => bind(samba.ldapsUrl, u));
          await time(samples.warm!, () => get(clients.warm, u));
          await time(samples.cold!, () => get(clients.cold, u));
        }
      }
    } finally {
      await Promise.all(Object.values(clients).map((c) => c.close()));
      await cold.close();
      await warm.close();
    }
    const row = (label: string, key: string) => {
      const x = summarize(samples[key]!);
      return [label, x.n, fmt(x.p50, 2), fmt(x.p99, 2)];
    };
    return table(
      ['latency on one keep-alive connection (ms), interleaved', 'n', 'p50', 'p99'],
      [
        row('baseline: HTTPS request straight to the Exchange stand-in, no gateway', 'https'),
        row('baseline: new LDAP connection + bind as the user (ldap://)', 'ldap'),
        row('baseline: new LDAPS connection + bind as the user (ldaps://)', 'ldaps'),
        row('through the gateway, authentication cached', 'warm'),
        row('through the gateway, caches off (LDAPS: search, bind, state + groups)', 'cold'),
      ],
    );
  } finally {
    await standin.close();
    await samba.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A self-signed EC certificate for the stand-in. */
function selfSignedPem(dir: string, name: string): { cert: string; key: string } {
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
      '-days',
      '2',
      '-subj',
      `/CN=${name}`,
      '-addext',
      `subjectAltName=DNS:${name}`,
      '-keyout',
      join(dir, 'up.key'),
      '-out',
      join(dir, 'up.crt'),
    ],
    { stdio: 'ignore' },
  );
  return { cert: readFileSync(join(dir, 'up.crt'), 'utf8'), key: readFileSync(join(dir, 'up.key'), 'utf8') };
}
