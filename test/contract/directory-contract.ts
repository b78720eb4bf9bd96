/**
 * The Directory contract (STYLE.md §13): one suite, run unchanged against every implementation
 * (`file` and `ldap` over plain LDAP, LDAPS and StartTLS). Expectations come from the AD fixtures
 * (test/helpers/ad-fixtures.ts) only, never from an implementation, so the `file` directory cannot
 * quietly drift from what a real DC answers.
 *
 * Lockout hygiene: the DC is shared by every integration test file, and each LDAP transport counts
 * against the same badPwdCount. So wrong passwords are tried at most twice per user and directory,
 * never on grace (reserved for lockout tests), and every wrong try on an active user is followed by
 * a right one, which resets the count on the DC.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Account, Directory, PasswordRefusal } from '../../src/directory/directory.js';
import { DOMAIN, GROUPS, USERS, groupDn, type GroupName, type TestUser } from '../helpers/ad-fixtures.js';

/** Makes a fresh, unused directory. Called once for the shared instance and again by close tests. */
export type MakeDirectory = () => Directory | Promise<Directory>;

/**
 * Contract breaches an implementation is known to have, each reported with a proposed fix. Their
 * tests run as `it.fails` for that implementation only, so the fix turns them red: then delete the
 * entry. Never add one to make a new failure go away without a report.
 * - `nul-truncation`: the server stops comparing a name or password at a NUL (`alice\0x` is alice).
 * - `spaces-ignored`: the server ignores leading and trailing spaces in a logon name.
 * - `malformed-dn-throws`: resolveGroup of a string that is not a valid DN throws instead of null.
 */
export type KnownBug = 'nul-truncation' | 'spaces-ignored' | 'malformed-dn-throws';

export interface ContractOptions {
  readonly knownBugs?: readonly KnownBug[];
}

type LookupLogon = Parameters<Directory['findAccount']>[0];

/** A sam logon built directly (parseLogon would refuse the hostile ones: the directory must not rely on it). */
export function samLogon(sam: string): LookupLogon {
  return { kind: 'sam', sam, display: `${DOMAIN.netbios}\\${sam}` };
}

export function upnLogon(upn: string): LookupLogon {
  return { kind: 'upn', upn, display: upn };
}

const ALL_USERS: readonly TestUser[] = Object.values(USERS);
/** grace is left alone: lockout tests elsewhere count her failed and successful logons. */
const ACTIVE = ALL_USERS.filter((u) => u.state === 'active' && u.sam !== 'grace');
const GROUP_NAMES = Object.keys(GROUPS) as GroupName[];
const ALL_GROUP_DNS = GROUP_NAMES.map((g) => GROUPS[g].dn);

/** The fixture groups `u` belongs to, directly or through nesting. */
export function fixtureGroupsOf(u: TestUser): Set<GroupName> {
  const out = new Set<GroupName>();
  const visit = (g: GroupName): void => {
    if (out.has(g)) return;
    out.add(g);
    GROUPS[g].memberOf.forEach(visit);
  };
  u.groups.forEach(visit);
  return out;
}

const lowerDns = (names: Iterable<GroupName>): string[] => [...names].map((g) => GROUPS[g].dn.toLowerCase()).sort();

/** A logon name in many spellings: AD matches sAMAccountName and UPN case-insensitively. */
const caseVariants = (s: string): string[] => [
  s,
  s.toUpperCase(),
  s[0]?.toUpperCase() + s.slice(1),
  [...s].map((c, i) => (i % 2 ? c.toUpperCase() : c)).join(''),
];

/**
 * Filter-injection shapes (RFC 4515 specials). Each must find nothing: a wildcard that matched would
 * let `*` log on as whoever sorts first, and a closed-paren splice could widen the filter.
 */
export const HOSTILE_SAMS = [
  '*',
  'al*',
  '*ice',
  'a*e',
  'alice)(objectClass=*',
  '*)(sAMAccountName=*',
  'alice)(|(sAMAccountName=*)',
  'alice\\2a',
  '(sAMAccountName=alice)',
] as const;
export const HOSTILE_UPNS = [
  '*',
  '*@lab.test',
  'al*@lab.test',
  'alice@lab.test)(objectClass=*',
  '*)(userPrincipalName=*',
  'alice@*',
] as const;

export function runDirectoryContract(name: string, makeDirectory: MakeDirectory, options: ContractOptions = {}): void {
  /** `it`, or `it.fails` where this implementation has the known bug. */
  const itBug = (bug: KnownBug) => (options.knownBugs?.includes(bug) ? it.fails : it);

  describe(`Directory contract: ${name}`, () => {
    let dir: Directory;
    beforeAll(async () => {
      dir = await makeDirectory();
    });
    afterAll(async () => {
      await dir?.close();
    });

    /** The fixture user's account as this directory finds it (by sam). */
    const accountOf = async (u: TestUser): Promise<Account> => {
      const a = await dir.findAccount(samLogon(u.sam));
      if (a === null) throw new Error(`findAccount(${u.sam}) returned null`);
      return a;
    };
    const check = async (u: TestUser, password: string) => dir.verifyPassword(await accountOf(u), password);
    const refused = (reason: PasswordRefusal) => ({ ok: false, reason });

    describe('findAccount', () => {
      it.each(ALL_USERS.map((u) => [u.sam, u] as const))(
        'finds %s by sAMAccountName with its DN, not one built from the name',
        async (_, u) => {
          expectAccount(await dir.findAccount(samLogon(u.sam)), u);
        },
      );

      it.each(ALL_USERS.map((u) => [u.upn, u] as const))('finds %s by UPN', async (_, u) => {
        expectAccount(await dir.findAccount(upnLogon(u.upn)), u);
      });

      it.each(caseVariants('alice'))('sAMAccountName in any case (%s) gives the canonical account', async (sam) => {
        expectAccount(await dir.findAccount(samLogon(sam)), USERS.alice);
      });

      it.each(caseVariants('carol@lab.test'))('UPN in any case (%s) gives the canonical account', async (upn) => {
        expectAccount(await dir.findAccount(upnLogon(upn)), USERS.carol);
      });

      it('non-ASCII and apostrophe CNs come back intact', async () => {
        expect((await accountOf(USERS.zoe)).dn).toBe('CN=Zoë Zimmer,CN=Users,DC=lab,DC=test');
        expect((await accountOf(USERS.obrien)).dn).toBe("CN=Seán O'Brien,CN=Users,DC=lab,DC=test");
        expect((await accountOf(USERS.obrien)).mail).toBe('sean.obrien@lab.test');
      });

      it.each(['nobody', 'alice2', 'lice', 'Alice Anders', USERS.alice.dn])('unknown sam %j → null', async (sam) => {
        expect(await dir.findAccount(samLogon(sam))).toBeNull();
      });

      it.each(['nobody@lab.test', 'alice@other.test', 'alice', USERS.alice.mail.replace('alice', 'alicia')])(
        'unknown UPN %j → null',
        async (upn) => {
          expect(await dir.findAccount(upnLogon(upn))).toBeNull();
        },
      );

      it.each(HOSTILE_SAMS)('filter-injection sam %j → null', async (sam) => {
        expect(await dir.findAccount(samLogon(sam))).toBeNull();
      });

      it.each(HOSTILE_UPNS)('filter-injection UPN %j → null', async (upn) => {
        expect(await dir.findAccount(upnLogon(upn))).toBeNull();
      });

      // ldapts escapes a NUL correctly (\00), but Samba reads the decoded assertion value as a C
      // string, so "alice\0x" finds alice. A name is the whole string the client sent (credentials.ts).
      itBug('nul-truncation').each([
        ['sam', 'alice\0'],
        ['sam', 'alice\0x'],
        ['upn', 'alice@lab.test\0'],
        ['upn', 'alice@lab.test\0x'],
      ] as const)('a NUL is part of the name: %s %j → null', async (kind, name) => {
        expect(await dir.findAccount(kind === 'sam' ? samLogon(name) : upnLogon(name))).toBeNull();
      });

      // The name is matched as sent, never trimmed (credentials.ts: "the gateway judges the very
      // string Exchange will receive"); "alice " is not alice.
      itBug('spaces-ignored').each([
        ['sam', 'alice '],
        ['sam', ' alice'],
        ['upn', 'alice@lab.test '],
        ['upn', ' alice@lab.test'],
      ] as const)('surrounding spaces are part of the name: %s %j → null', async (kind, name) => {
        expect(await dir.findAccount(kind === 'sam' ? samLogon(name) : upnLogon(name))).toBeNull();
      });

      it("a machine account is not a person: the DC's own account (DC1$) → null", async () => {
        expect(await dir.findAccount(samLogon(`${DOMAIN.dcHostName.toUpperCase()}$`))).toBeNull();
      });
    });

    describe('verifyPassword', () => {
      it.each(ACTIVE.map((u) => [u.sam, u] as const))('%s with the right password → ok', async (_, u) => {
        expect(await check(u, u.password)).toEqual({ ok: true });
      });

      it('a wrong password → bad-credentials (and the right one still works afterwards)', async () => {
        expect(await check(USERS.alice, `${USERS.alice.password}x`)).toEqual(refused('bad-credentials'));
        expect(await check(USERS.alice, USERS.alice.password)).toEqual({ ok: true });
      });

      it("another user's password → bad-credentials", async () => {
        expect(await check(USERS.bob, USERS.alice.password)).toEqual(refused('bad-credentials'));
        expect(await check(USERS.bob, USERS.bob.password)).toEqual({ ok: true });
      });

      it('the password is compared exactly: no trimming, no case folding', async () => {
        expect(await check(USERS.carol, `${USERS.carol.password} `)).toEqual(refused('bad-credentials'));
        expect(await check(USERS.carol, USERS.carol.password.toLowerCase())).toEqual(refused('bad-credentials'));
        expect(await check(USERS.carol, USERS.carol.password)).toEqual({ ok: true });
      });

      it.each([
        ['dave', 'account-disabled'],
        ['erin', 'password-must-change'],
        ['frank', 'account-expired'],
      ] as const)('%s with the right password → %s', async (sam, reason) => {
        expect(await check(USERS[sam], USERS[sam].password)).toEqual(refused(reason));
      });

      it.each(['dave', 'erin', 'frank'] as const)(
        '%s with a wrong password → bad-credentials: no state without the password',
        async (sam) => {
          expect(await check(USERS[sam], `${USERS[sam].password}x`)).toEqual(refused('bad-credentials'));
        },
      );

      it("zoe's password with a colon and non-ASCII characters works; its UTF-8-as-latin1 spelling and its part after the colon do not", async () => {
        const pw = USERS.zoe.password;
        expect(pw).toContain(':');
        expect(await check(USERS.zoe, pw)).toEqual({ ok: true });
        expect(await check(USERS.zoe, Buffer.from(pw, 'utf8').toString('latin1'))).toEqual(refused('bad-credentials'));
        expect(await check(USERS.zoe, pw.slice(pw.indexOf(':') + 1))).toEqual(refused('bad-credentials'));
        expect(await check(USERS.zoe, pw)).toEqual({ ok: true });
      });

      it.each(['alice', 'dave'] as const)(
        'an empty password for %s → bad-credentials, never ok (an empty simple bind is anonymous)',
        async (sam) => {
          expect(await check(USERS[sam], '')).toEqual(refused('bad-credentials'));
        },
      );

      // Samba checks only the part before a NUL: "right\0anything" would be accepted.
      itBug('nul-truncation')(
        'the right password followed by a NUL and more → bad-credentials (no C-string truncation)',
        async () => {
          expect(await check(USERS.henry, `${USERS.henry.password}\0x`)).toEqual(refused('bad-credentials'));
          expect(await check(USERS.henry, USERS.henry.password)).toEqual({ ok: true });
        },
      );

      it('an account that is not (or no longer) in the directory → bad-credentials', async () => {
        const ghost: Account = {
          dn: `CN=Ghost Gone,${DOMAIN.usersDn}`,
          sam: 'ghost',
          user: `${DOMAIN.netbios}\\ghost`,
          upn: `ghost@${DOMAIN.dnsName}`,
          mail: null,
        };
        expect(await dir.verifyPassword(ghost, 'Gh0st-Passw0rd!')).toEqual(refused('bad-credentials'));
      });
    });

    describe('memberships', () => {
      it.each(ALL_USERS.filter((u) => u.sam !== 'grace').map((u) => [u.sam, u] as const))(
        '%s: exactly its direct and nested fixture groups, as lowercase DNs',
        async (_, u) => {
          const got = await dir.memberships(await accountOf(u), ALL_GROUP_DNS);
          expect([...got].sort()).toEqual(lowerDns(fixtureGroupsOf(u)));
        },
      );

      it('spelled out: alice direct, carol nested, bob none, mallory allowed and denied, henry mobile', async () => {
        const of = async (u: TestUser) => [...(await dir.memberships(await accountOf(u), ALL_GROUP_DNS))].sort();
        const dn = (g: GroupName) => groupDn(g).toLowerCase();
        expect(await of(USERS.alice)).toEqual([dn('AllowExternalAccess')]);
        expect(await of(USERS.carol)).toEqual([dn('AllowExternalAccess'), dn('ExternalStaff')].sort());
        expect(await of(USERS.bob)).toEqual([]);
        expect(await of(USERS.mallory)).toEqual([dn('AllowExternalAccess'), dn('ExternalDenied')].sort());
        expect(await of(USERS.henry)).toEqual([dn('MobileUsers')]);
      });

      it('only groups asked for are returned; nested membership alone is enough', async () => {
        const carol = await accountOf(USERS.carol);
        expect([...(await dir.memberships(carol, [GROUPS.AllowExternalAccess.dn]))]).toEqual([
          GROUPS.AllowExternalAccess.dn.toLowerCase(),
        ]);
        const alice = await accountOf(USERS.alice);
        expect([...(await dir.memberships(alice, [GROUPS.MobileUsers.dn, GROUPS.ExternalDenied.dn]))]).toEqual([]);
      });

      it('asked-for DNs match in any case and always come back lowercase', async () => {
        const mallory = await accountOf(USERS.mallory);
        const got = await dir.memberships(mallory, [
          GROUPS.AllowExternalAccess.dn.toUpperCase(),
          GROUPS.ExternalDenied.dn.toLowerCase(),
        ]);
        expect([...got].sort()).toEqual(lowerDns(['AllowExternalAccess', 'ExternalDenied']));
        for (const g of got) expect(g).toBe(g.toLowerCase());
      });

      it('an unknown group DN among the asked ones is ignored, not an error', async () => {
        const alice = await accountOf(USERS.alice);
        const got = await dir.memberships(alice, [`CN=No Such Group,${DOMAIN.usersDn}`, GROUPS.AllowExternalAccess.dn]);
        expect([...got]).toEqual([GROUPS.AllowExternalAccess.dn.toLowerCase()]);
      });

      it('an empty list → an empty set', async () => {
        expect((await dir.memberships(await accountOf(USERS.alice), [])).size).toBe(0);
      });
    });

    describe('groupsOf', () => {
      it("carol's transitive groups include ExternalStaff and AllowExternalAccess, named by sAMAccountName", async () => {
        const groups = await dir.groupsOf(await accountOf(USERS.carol));
        for (const g of ['ExternalStaff', 'AllowExternalAccess'] as const) {
          const found = groups.find((x) => x.name === g);
          expect(found, `${g} in ${JSON.stringify(groups)}`).toBeDefined();
          expect(found?.dn.toLowerCase()).toBe(GROUPS[g].dn.toLowerCase());
        }
      });

      it.each(ALL_USERS.filter((u) => u.sam !== 'grace').map((u) => [u.sam, u] as const))(
        '%s: the fixture groups among its groups are exactly its direct and nested ones',
        async (_, u) => {
          const groups = await dir.groupsOf(await accountOf(u));
          const fixture = groups
            .filter((g) => (GROUP_NAMES as string[]).includes(g.name))
            .map((g) => g.name)
            .sort();
          expect(fixture).toEqual([...fixtureGroupsOf(u)].sort());
          expect(new Set(groups.map((g) => g.dn.toLowerCase())).size).toBe(groups.length); // no duplicates
        },
      );
    });

    describe('resolveGroup', () => {
      it.each(GROUP_NAMES.flatMap((g) => caseVariants(g).map((spelling) => [spelling, g] as const)))(
        'by sAMAccountName %s',
        async (spelling, g) => {
          const ref = await dir.resolveGroup(spelling);
          expect(ref?.name).toBe(g);
          expect(ref?.dn.toLowerCase()).toBe(GROUPS[g].dn.toLowerCase());
        },
      );

      it.each(
        GROUP_NAMES.flatMap((g) =>
          [GROUPS[g].dn, GROUPS[g].dn.toLowerCase(), GROUPS[g].dn.toUpperCase()].map((dn) => [dn, g] as const),
        ),
      )('by DN %s', async (dn, g) => {
        const ref = await dir.resolveGroup(dn);
        expect(ref?.name).toBe(g);
        expect(ref?.dn.toLowerCase()).toBe(GROUPS[g].dn.toLowerCase());
      });

      it.each(['NoSuchGroup', 'AllowExternal', 'Allow*', '*', 'AllowExternalAccess)(objectClass=*', 'alice'])(
        'unknown name %j → null',
        async (name) => {
          expect(await dir.resolveGroup(name)).toBeNull();
        },
      );

      itBug('nul-truncation')('a NUL is part of the group name: AllowExternalAccess\\0x → null', async () => {
        expect(await dir.resolveGroup('AllowExternalAccess\0x')).toBeNull();
      });

      // A typo in a policy DN names no group: null, so `exgate check` and policy compile report
      // "group … not found" instead of "directory unavailable" (which `serve` retries forever).
      itBug('malformed-dn-throws').each(['CN=', 'CN=foo,,DC=x', `CN=AllowExternalAccess,,${DOMAIN.usersDn}`])(
        'a malformed DN %j → null, not a fault',
        async (dn) => {
          expect(await dir.resolveGroup(dn)).toBeNull();
        },
      );

      it.each([
        `CN=NoSuchGroup,${DOMAIN.usersDn}`,
        `CN=AllowExternalAccess,OU=Nowhere,${DOMAIN.baseDn}`,
        USERS.alice.dn, // exists, but is not a group
      ])('unknown DN %j → null', async (dn) => {
        expect(await dir.resolveGroup(dn)).toBeNull();
      });
    });

    describe('ping and close', () => {
      it('ping resolves', async () => {
        await expect(dir.ping()).resolves.toBeUndefined();
      });

      it('close() is idempotent, used or not', async () => {
        const used = await makeDirectory();
        await used.ping();
        expect(await used.findAccount(samLogon('alice'))).not.toBeNull();
        await used.close();
        await expect(used.close()).resolves.toBeUndefined();
        const unused = await makeDirectory();
        await unused.close();
        await expect(unused.close()).resolves.toBeUndefined();
      });
    });
  });
}

/** The account must be the fixture's: canonical sam, `LAB\sam`, its real DN (CN ≠ sam), mail and UPN. */
export function expectAccount(a: Account | null, u: TestUser): void {
  expect(a, `account for ${u.sam}`).not.toBeNull();
  const got = a && { dn: a.dn.toLowerCase(), sam: a.sam, user: a.user, upn: a.upn, mail: a.mail };
  expect(got).toEqual({
    dn: u.dn.toLowerCase(),
    sam: u.sam,
    user: `${DOMAIN.netbios}\\${u.sam}`,
    upn: u.upn,
    mail: u.mail,
  });
}
