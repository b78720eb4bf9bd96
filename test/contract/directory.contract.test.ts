/**
 * Runs the one Directory contract (directory-contract.ts) against every implementation: the `file`
 * directory built from the AD fixtures, and the `ldap` directory against the shared Samba DC over
 * plain LDAP, LDAPS and StartTLS. Then the faults only a network directory has: a dead port, a
 * server that accepts and never answers, a TLS handshake that never finishes, an untrusted
 * certificate, a failing service bind, and a URL list whose first entry is dead. Every fault must
 * surface as DirectoryUnavailableError (→ 503), promptly, and never as a "no".
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { FileSettings, LdapSettings } from '../../src/config/load.js';
import { Secret } from '../../src/config/yaml.js';
import type { Account, Directory } from '../../src/directory/directory.js';
import { FileDirectory } from '../../src/directory/file.js';
import { LdapDirectory, type DirectoryLog } from '../../src/directory/ldap.js';
import { DirectoryUnavailableError } from '../../src/errors.js';
import { DOMAIN, SERVICE_ACCOUNT, USERS } from '../helpers/ad-fixtures.js';
import { fileDirectoryYaml } from '../helpers/gateway-harness.js';
import { expectAccount, runDirectoryContract, samLogon } from './directory-contract.js';

const ldapUrl = inject('ldapUrl');
const ldapsUrl = inject('ldapsUrl');
const caPem = inject('ldapCaPem');

/** Warnings every LdapDirectory of this file reported; checked for leaked secrets at the end. */
const warnings: { obj: object; msg: string }[] = [];
const log: DirectoryLog = { warn: (obj, msg) => warnings.push({ obj, msg }) };

function ldapSettings(over: Partial<LdapSettings> = {}): LdapSettings {
  return {
    type: 'ldap',
    urls: [ldapUrl],
    ca: undefined,
    startTls: false,
    bindDn: SERVICE_ACCOUNT.dn,
    bindPassword: new Secret(SERVICE_ACCOUNT.password),
    baseDn: DOMAIN.baseDn,
    netbiosDomain: DOMAIN.netbios,
    upnSuffixes: [DOMAIN.dnsName],
    connectTimeoutMs: 1000,
    timeoutMs: 3000,
    maxConcurrentBinds: 16,
    maxQueuedBinds: 256,
    dcRetrySeconds: 30,
    ...over,
  };
}

const tmp = mkdtempSync(join(tmpdir(), 'exgate-dir-contract-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const usersFile = join(tmp, 'users.yaml');
writeFileSync(usersFile, fileDirectoryYaml());
const fileSettings: FileSettings = {
  type: 'file',
  path: usersFile,
  baseDn: DOMAIN.baseDn,
  netbiosDomain: DOMAIN.netbios,
  upnSuffixes: [DOMAIN.dnsName],
};

runDirectoryContract('file (fixtures as YAML)', () => FileDirectory.load(fileSettings));
runDirectoryContract('ldap (plain ldap://)', () => new LdapDirectory(ldapSettings(), log));
runDirectoryContract(
  'ldap (ldaps:// with the CA)',
  () => new LdapDirectory(ldapSettings({ urls: [ldapsUrl], ca: caPem }), log),
);
runDirectoryContract(
  'ldap (ldap:// + StartTLS with the CA)',
  () => new LdapDirectory(ldapSettings({ startTls: true, ca: caPem }), log),
);

// ---------------------------------------------------------------------------------------------------
// Technical faults (LDAP only)
// ---------------------------------------------------------------------------------------------------

const alice: Account = {
  dn: USERS.alice.dn,
  sam: USERS.alice.sam,
  user: `${DOMAIN.netbios}\\${USERS.alice.sam}`,
  upn: USERS.alice.upn,
  mail: USERS.alice.mail,
};

/** A loopback TCP server; `onSocket` decides what it does with each connection. */
async function tcpServer(onSocket: (s: Socket) => void): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.once('close', () => sockets.delete(s));
    onSocket(s);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** A loopback port nobody listens on (bound, then released). */
async function deadPort(): Promise<number> {
  const s = await tcpServer(() => {});
  await s.close();
  return s.port;
}

/**
 * Answers every LDAP request with a successful ExtendedResponse (the StartTLS "go ahead",
 * RFC 4511 §4.14.2), then never speaks again: the client's TLS handshake hangs.
 * LDAPMessage ::= SEQUENCE { messageID INTEGER, extendedResp [APPLICATION 24] { resultCode 0, "", "" } }
 */
function startTlsThenSilence(s: Socket): void {
  let answered = false;
  s.on('data', (buf) => {
    if (answered) return; // the ClientHello: ignore it
    answered = true;
    const lenBytes = (buf[1] ?? 0) & 0x80 ? (buf[1] ?? 0) & 0x7f : 0;
    const at = 2 + lenBytes; // INTEGER tag of messageID
    const id = buf.subarray(at + 2, at + 2 + (buf[at + 1] ?? 1));
    const body = Buffer.from([0x78, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00]);
    const msgId = Buffer.concat([Buffer.from([0x02, id.length]), id]);
    s.write(Buffer.concat([Buffer.from([0x30, msgId.length + body.length]), msgId, body]));
  });
}

/** Runs `op`, expecting DirectoryUnavailableError; returns how long it took. */
async function unavailable(op: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  const err = await op().then(
    () => new Error('resolved, expected DirectoryUnavailableError'),
    (e: unknown) => e,
  );
  const ms = performance.now() - t0;
  expect(err).toBeInstanceOf(DirectoryUnavailableError);
  expect(String((err as Error).message)).not.toContain(SERVICE_ACCOUNT.password);
  return ms;
}

describe('LdapDirectory technical faults → DirectoryUnavailableError', () => {
  const open: Directory[] = [];
  const dir = (over: Partial<LdapSettings>): LdapDirectory => {
    const d = new LdapDirectory(ldapSettings(over), log);
    open.push(d);
    return d;
  };
  afterAll(async () => {
    await Promise.all(open.map((d) => d.close()));
  });

  describe('nothing listening on the port', () => {
    let url: string;
    beforeAll(async () => {
      url = `ldap://127.0.0.1:${await deadPort()}`;
    });

    it('findAccount throws, quickly', async () => {
      expect(await unavailable(() => dir({ urls: [url] }).findAccount(samLogon('alice')))).toBeLessThan(1500);
    });

    it('every other method throws too: a fault is never a "no"', async () => {
      const d = dir({ urls: [url] });
      await unavailable(() => d.verifyPassword(alice, USERS.alice.password));
      await unavailable(() => d.memberships(alice, [USERS.alice.dn]));
      await unavailable(() => d.groupsOf(alice));
      await unavailable(() => d.resolveGroup('AllowExternalAccess'));
      await unavailable(() => d.resolveGroup(`CN=AllowExternalAccess,${DOMAIN.usersDn}`));
      await unavailable(() => d.ping());
    });

    it('with ldaps:// and StartTLS as well', async () => {
      const port = new URL(url).port;
      expect(
        await unavailable(() => dir({ urls: [`ldaps://127.0.0.1:${port}`], ca: caPem }).findAccount(samLogon('alice'))),
      ).toBeLessThan(1500);
      expect(
        await unavailable(() => dir({ urls: [url], startTls: true, ca: caPem }).findAccount(samLogon('alice'))),
      ).toBeLessThan(1500);
    });

    it('a directory that failed works once the DC is reachable: the first URL dead, the second Samba', async () => {
      const d = dir({ urls: [url, ldapUrl] });
      expectAccount(await d.findAccount(samLogon('alice')), USERS.alice);
      expect(await d.verifyPassword(alice, USERS.alice.password)).toEqual({ ok: true });
      await expect(d.ping()).resolves.toBeUndefined();
      expect(warnings.some((w) => JSON.stringify(w.obj).includes(url))).toBe(true);
    });

    it('a URL list whose first entry is dead: a password check as the very first call still works', async () => {
      const d = dir({ urls: [url, ldapUrl] });
      expect(await d.verifyPassword(alice, USERS.alice.password)).toEqual({ ok: true });
    });
  });

  describe('a server that accepts and never answers (timeouts 500 ms)', () => {
    let hole: Awaited<ReturnType<typeof tcpServer>>;
    beforeAll(async () => {
      hole = await tcpServer(() => {});
    });
    afterAll(async () => {
      await hole.close();
    });
    const fast = { connectTimeoutMs: 500, timeoutMs: 500 };

    it.each([
      ['ldap://', () => ({ urls: [`ldap://127.0.0.1:${hole.port}`] })],
      ['ldaps:// (TLS handshake never answered)', () => ({ urls: [`ldaps://127.0.0.1:${hole.port}`], ca: caPem })],
      [
        'StartTLS (extended request never answered)',
        () => ({ urls: [`ldap://127.0.0.1:${hole.port}`], startTls: true, ca: caPem }),
      ],
    ] as const)('%s: findAccount throws within the timeouts', async (_, over) => {
      expect(await unavailable(() => dir({ ...fast, ...over() }).findAccount(samLogon('alice')))).toBeLessThan(2500);
    });

    it('verifyPassword and ping throw within the timeouts', async () => {
      const d = dir({ ...fast, urls: [`ldap://127.0.0.1:${hole.port}`] });
      expect(await unavailable(() => d.verifyPassword(alice, USERS.alice.password))).toBeLessThan(2500);
      expect(await unavailable(() => d.ping())).toBeLessThan(2500);
    });

    it('a URL list whose first entry hangs falls over to Samba', async () => {
      const d = dir({ ...fast, urls: [`ldap://127.0.0.1:${hole.port}`, ldapUrl] });
      expectAccount(await d.findAccount(samLogon('alice')), USERS.alice);
    });
  });

  describe('StartTLS accepted, then the TLS handshake never answered (timeouts 500 ms)', () => {
    let server: Awaited<ReturnType<typeof tcpServer>>;
    beforeAll(async () => {
      server = await tcpServer(startTlsThenSilence);
    });
    afterAll(async () => {
      await server.close();
    });

    it('findAccount throws within the timeouts', async () => {
      const d = dir({
        connectTimeoutMs: 500,
        timeoutMs: 500,
        urls: [`ldap://127.0.0.1:${server.port}`],
        startTls: true,
        ca: caPem,
      });
      const deadline = new Promise<'hung'>((r) => setTimeout(() => r('hung'), 3000).unref());
      const outcome = await Promise.race([
        d.findAccount(samLogon('alice')).then(
          () => 'resolved',
          (e: unknown) => (e instanceof DirectoryUnavailableError ? 'unavailable' : `other: ${String(e)}`),
        ),
        deadline,
      ]);
      expect(outcome).toBe('unavailable');
    });
  });

  describe('fail closed', () => {
    it('ldaps:// without the CA: the self-signed DC certificate is refused', async () => {
      await unavailable(() => dir({ urls: [ldapsUrl], ca: undefined }).findAccount(samLogon('alice')));
    });

    it('StartTLS without the CA: the self-signed DC certificate is refused', async () => {
      await unavailable(() => dir({ startTls: true, ca: undefined }).findAccount(samLogon('alice')));
    });

    it('a wrong service-account password is a fault, not "no such user"', async () => {
      const d = dir({ bindPassword: new Secret('not-the-Svc-passw0rd') });
      await unavailable(() => d.findAccount(samLogon('alice')));
      await unavailable(() => d.resolveGroup('AllowExternalAccess'));
      // Reset svc-exgate's badPwdCount on the shared DC (a successful bind does).
      const ok = dir({});
      await ok.ping();
    });
  });

  it('no warning carries the service-account password', () => {
    expect(warnings.length).toBeGreaterThan(0);
    expect(JSON.stringify(warnings)).not.toContain(SERVICE_ACCOUNT.password);
    expect(JSON.stringify(warnings)).not.toContain('not-the-Svc-passw0rd');
  });
});
