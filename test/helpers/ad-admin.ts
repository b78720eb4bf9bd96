/**
 * Directory changes the auth tests make on the shared Samba DC: their own users (so no other
 * test sees the change), fine-grained password policies, and reading what AD itself counted.
 */
import { Attribute, Change, Client } from 'ldapts';
import { ADMIN, DOMAIN, GLOBAL_SECURITY_GROUP_TYPE, groupDn } from './ad-fixtures.js';

export interface NewUser {
  readonly sam: string;
  readonly password: string;
  readonly dn: string;
}

async function asAdmin<T>(ldapUrl: string, fn: (c: Client) => Promise<T>): Promise<T> {
  const c = new Client({ url: ldapUrl, connectTimeout: 3000, timeout: 10_000 });
  try {
    await c.bind(ADMIN.upn, ADMIN.password);
    return await fn(c);
  } finally {
    await c.unbind().catch(() => {});
  }
}

/** Creates an enabled user (CN differs from its name) in the given groups. */
export async function createUser(
  ldapUrl: string,
  sam: string,
  password: string,
  groups: string[] = [],
): Promise<NewUser> {
  const dn = `CN=Test ${sam},${DOMAIN.usersDn}`;
  await asAdmin(ldapUrl, async (c) => {
    const attr = (type: string, value: string | Buffer) => new Attribute({ type, values: [value] as string[] });
    await c.add(dn, [
      new Attribute({ type: 'objectClass', values: ['top', 'person', 'organizationalPerson', 'user'] }),
      attr('sAMAccountName', sam),
      attr('userPrincipalName', `${sam}@${DOMAIN.dnsName}`),
      attr('mail', `${sam}@${DOMAIN.dnsName}`),
      attr('unicodePwd', Buffer.from(`"${password}"`, 'utf16le')),
      attr('userAccountControl', '66048'),
    ]);
    for (const g of groups)
      await c.modify(
        groupDn(g),
        new Change({ operation: 'add', modification: new Attribute({ type: 'member', values: [dn] }) }),
      );
  });
  return { sam, password, dn };
}

export async function deleteUser(ldapUrl: string, dn: string): Promise<void> {
  await asAdmin(ldapUrl, (c) => c.del(dn)).catch(() => {});
}

/** Adds `dn` to the group or removes it. */
export async function setGroupMember(ldapUrl: string, op: 'add' | 'delete', group: string, dn: string): Promise<void> {
  await asAdmin(ldapUrl, (c) =>
    c.modify(
      groupDn(group),
      new Change({ operation: op, modification: new Attribute({ type: 'member', values: [dn] }) }),
    ),
  );
}

/** Creates a global security group. */
export async function createGroup(ldapUrl: string, name: string): Promise<string> {
  const dn = groupDn(name);
  await asAdmin(ldapUrl, (c) =>
    c.add(dn, { objectClass: ['top', 'group'], sAMAccountName: name, groupType: String(GLOBAL_SECURITY_GROUP_TYPE) }),
  );
  return dn;
}

/** Reads attributes of an entry as strings. */
export async function readAttributes(
  ldapUrl: string,
  dn: string,
  attributes: string[],
): Promise<Record<string, string>> {
  return asAdmin(ldapUrl, async (c) => {
    const { searchEntries } = await c.search(dn, { scope: 'base', attributes });
    const e = searchEntries[0] ?? {};
    const out: Record<string, string> = {};
    for (const a of attributes) {
      const key = Object.keys(e).find((k) => k.toLowerCase() === a.toLowerCase());
      const v = key === undefined ? undefined : (e as Record<string, unknown>)[key];
      const first: unknown = Array.isArray(v) ? v[0] : v;
      out[a] = first === undefined || first === null ? '' : String(first);
    }
    return out;
  });
}

/** Binds as `dn` with `password` directly against the DC; returns AD's sub-code on failure or 'ok'. */
export async function bindDirect(ldapUrl: string, dn: string, password: string): Promise<string> {
  const c = new Client({ url: ldapUrl, connectTimeout: 3000, timeout: 5000 });
  try {
    await c.bind(dn, password);
    return 'ok';
  } catch (err) {
    return /data ([0-9a-f]{3})/.exec((err as Error).message)?.[1] ?? (err as Error).message;
  } finally {
    await c.unbind().catch(() => {});
  }
}
