/**
 * Proves the Samba AD fixtures behave like the real AD cases the gateway must handle, using raw ldapts
 * (no gateway code). If these fail, fix the test environment before looking at gateway tests.
 */
import { Client } from 'ldapts';
import { afterEach, describe, expect, inject, it } from 'vitest';
import {
  AD_BIND_ERROR,
  DOMAIN,
  GROUPS,
  MATCHING_RULE_IN_CHAIN,
  SERVICE_ACCOUNT,
  USERS,
  groupDn,
  userDn,
} from '../helpers/ad-fixtures.js';
import { sambaAdmin } from '../helpers/samba.js';

const ldapUrl = inject('ldapUrl');
const ldapsUrl = inject('ldapsUrl');
const ca = inject('ldapCaPem');

const clients: Client[] = [];
/** A client that is unbound after the test. */
function client(url = ldapUrl, tlsOptions?: { ca: string }): Client {
  const c = new Client({ url, connectTimeout: 5000, timeout: 10_000, ...(tlsOptions ? { tlsOptions } : {}) });
  clients.push(c);
  return c;
}
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.unbind().catch(() => undefined)));
});

/** Binds and returns 'ok' or the AD `data` sub-code of the failure (or the message if there is none). */
async function bindResult(dn: string, password: string): Promise<string> {
  try {
    await client().bind(dn, password);
    return 'ok';
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    return /data ([0-9a-f]{3})/.exec(msg)?.[1] ?? msg;
  }
}

/** Whether `dn` is a transitive member of `group`, via a base search with LDAP_MATCHING_RULE_IN_CHAIN. */
async function inChain(c: Client, dn: string, group: string): Promise<boolean> {
  const { searchEntries } = await c.search(dn, {
    scope: 'base',
    filter: `(memberOf:${MATCHING_RULE_IN_CHAIN}:=${groupDn(group)})`,
    attributes: ['1.1'],
  });
  return searchEntries.length === 1;
}

describe('Samba AD fixtures', () => {
  it('service account binds (by DN and by UPN) and can search users', async () => {
    expect(await bindResult(SERVICE_ACCOUNT.dn, SERVICE_ACCOUNT.password)).toBe('ok');
    const c = client();
    await c.bind(SERVICE_ACCOUNT.upn, SERVICE_ACCOUNT.password);
    const { searchEntries } = await c.search(DOMAIN.baseDn, {
      filter: '(sAMAccountName=alice)',
      attributes: ['mail', 'userPrincipalName', 'cn'],
    });
    expect(searchEntries).toHaveLength(1);
    expect(searchEntries[0]).toMatchObject({
      dn: USERS.alice.dn,
      cn: 'Alice Anders',
      mail: 'alice@lab.test',
      userPrincipalName: 'alice@lab.test',
    });
  });

  it('alice binds by DN with her password; a wrong password gives 52e', async () => {
    expect(USERS.alice.dn).toBe('CN=Alice Anders,CN=Users,DC=lab,DC=test');
    expect(await bindResult(userDn('alice'), USERS.alice.password)).toBe('ok');
    expect(await bindResult(userDn('alice'), `${USERS.alice.password}x`)).toBe(AD_BIND_ERROR.INVALID_CREDENTIALS);
  });

  it.each([
    ['dave', AD_BIND_ERROR.ACCOUNT_DISABLED],
    ['erin', AD_BIND_ERROR.PASSWORD_MUST_CHANGE],
    ['frank', AD_BIND_ERROR.ACCOUNT_EXPIRED],
  ] as const)('%s with the right password fails with data %s', async (sam, code) => {
    expect(USERS[sam].bindError).toBe(code);
    expect(await bindResult(USERS[sam].upn, USERS[sam].password)).toBe(code);
  });

  it('every other fixture user binds with the right password (UPN and LAB\\sam)', async () => {
    const active = Object.values(USERS).filter((u) => u.bindError === null);
    expect(active.map((u) => u.sam).sort()).toEqual([
      'alice',
      'bob',
      'carol',
      'grace',
      'henry',
      'mallory',
      'obrien',
      'zoe',
    ]);
    for (const u of active) {
      expect([u.sam, await bindResult(u.upn, u.password)]).toEqual([u.sam, 'ok']);
      expect([u.sam, await bindResult(u.downLevel, u.password)]).toEqual([u.sam, 'ok']);
    }
  });

  it("zoe's password with a colon and non-ASCII characters binds; non-ASCII CN and O'Brien DN work", async () => {
    expect(USERS.zoe.password).toMatch(/:/);
    expect(await bindResult(USERS.zoe.dn, USERS.zoe.password)).toBe('ok');
    // The same password encoded as latin1 must not work: proves UTF-8 is what the DC expects.
    const latin1 = Buffer.from(USERS.zoe.password, 'utf8').toString('latin1');
    expect(await bindResult(USERS.zoe.dn, latin1)).toBe(AD_BIND_ERROR.INVALID_CREDENTIALS);
    expect(USERS.zoe.dn).toBe('CN=Zoë Zimmer,CN=Users,DC=lab,DC=test');
    expect(await bindResult(USERS.obrien.dn, USERS.obrien.password)).toBe('ok');

    const c = client();
    await c.bind(SERVICE_ACCOUNT.dn, SERVICE_ACCOUNT.password);
    const { searchEntries } = await c.search(DOMAIN.baseDn, {
      filter: '(sAMAccountName=obrien)',
      attributes: ['cn', 'mail'],
    });
    expect(searchEntries[0]).toMatchObject({ cn: "Seán O'Brien", mail: 'sean.obrien@lab.test' });
  });

  it('membership: alice direct, carol nested via ExternalStaff, bob none, mallory allowed and denied', async () => {
    const c = client();
    await c.bind(SERVICE_ACCOUNT.dn, SERVICE_ACCOUNT.password);
    expect(await inChain(c, userDn('alice'), 'AllowExternalAccess')).toBe(true);
    expect(await inChain(c, userDn('carol'), 'AllowExternalAccess')).toBe(true);
    expect(await inChain(c, userDn('bob'), 'AllowExternalAccess')).toBe(false);
    expect(await inChain(c, userDn('henry'), 'AllowExternalAccess')).toBe(false);
    expect(await inChain(c, userDn('henry'), 'MobileUsers')).toBe(true);
    expect(await inChain(c, userDn('mallory'), 'AllowExternalAccess')).toBe(true);
    expect(await inChain(c, userDn('mallory'), 'ExternalDenied')).toBe(true);

    // carol's direct memberOf does not contain AllowExternalAccess: only the nested query finds it.
    const { searchEntries } = await c.search(userDn('carol'), { scope: 'base', attributes: ['memberOf'] });
    expect(searchEntries[0]?.memberOf).toBe(GROUPS.ExternalStaff.dn);
  });

  it('LDAPS on 636 verifies against the test CA', async () => {
    const c = client(ldapsUrl, { ca });
    await c.bind(USERS.alice.upn, USERS.alice.password);
    expect(await inChain(c, userDn('alice'), 'AllowExternalAccess')).toBe(true);
  });

  it('LDAPS without the CA is rejected (self-signed chain)', async () => {
    const c = client(ldapsUrl, { ca: '' });
    await expect(c.bind(USERS.alice.upn, USERS.alice.password)).rejects.toThrow(/certificate/i);
  });

  it('StartTLS on 389 verifies against the test CA', async () => {
    const c = client();
    await c.startTLS({ ca });
    await c.bind(USERS.alice.dn, USERS.alice.password);
    expect(await inChain(c, userDn('alice'), 'AllowExternalAccess')).toBe(true);
  });

  it('admin helpers work on a throwaway user and group', async () => {
    const admin = sambaAdmin(ldapUrl);
    const sam = `tmp-${process.pid}-${Date.now().toString(36)}`;
    const dn = `CN=Temp ${sam},${DOMAIN.usersDn}`;
    const grp = `TmpGroup-${sam}`;
    const pw1 = 'Tmp-Passw0rd!1';
    const pw2 = 'Tmp-Passw0rd!2';
    await admin.run(['user', 'add', sam, pw1, '--given-name=Temp', `--surname=${sam}`]);
    await admin.run(['group', 'add', grp]);
    try {
      expect(await admin.findDn(sam)).toBe(dn);
      expect(await bindResult(dn, pw1)).toBe('ok');

      await admin.setDisabled(sam, true);
      expect(await bindResult(dn, pw1)).toBe(AD_BIND_ERROR.ACCOUNT_DISABLED);
      await admin.setDisabled(sam, false);
      expect(await bindResult(dn, pw1)).toBe('ok');

      await admin.setPassword(sam, pw2);
      expect(await bindResult(dn, pw1)).toBe(AD_BIND_ERROR.INVALID_CREDENTIALS);
      expect(await bindResult(dn, pw2)).toBe('ok');

      const c = client();
      await c.bind(SERVICE_ACCOUNT.dn, SERVICE_ACCOUNT.password);
      await admin.addMember(grp, dn);
      expect(await inChain(c, dn, grp)).toBe(true);
      await admin.removeMember(grp, dn);
      expect(await inChain(c, dn, grp)).toBe(false);
    } finally {
      await admin.run(['user', 'delete', sam]).catch(() => undefined);
      await admin.run(['group', 'delete', grp]).catch(() => undefined);
    }
  });
});
