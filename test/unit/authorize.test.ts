// Table tests for authorize / authorizeAnonymous (src/pipeline/authorize.ts) against a real compiled policy:
// the policy is loaded with loadPolicy against a FileDirectory written into a temp dir, and each
// user's Principal carries exactly what the gateway would give it: directory.memberships() of the
// policy's groups (lowercase DNs, nested membership resolved).
import { randomBytes, scryptSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  authorize,
  authorizeAnonymous,
  ruleMatches,
  type Decision,
  type Principal,
} from '../../src/pipeline/authorize.js';
import { FileDirectory } from '../../src/directory/file.js';
import { loadPolicy, type Policy } from '../../src/policy/compile.js';
import { SERVICES, type Service } from '../../src/pipeline/services.js';

const DOMAIN = { netbios: 'LAB', upnSuffixes: ['lab.test'] };
const PASSWORD = 'Authorize-Test-1';

/** A users-file hash with scrypt N=1024 (the file directory accepts any power of two; 16384 is slow). */
function fastHash(password: string): string {
  const salt = randomBytes(16);
  const hash = scryptSync(password, salt, 32, { N: 1024, r: 8, p: 1 });
  return `scrypt$1024$8$1$${salt.toString('base64')}$${hash.toString('base64')}`;
}

const USERS = ['alice', 'bob', 'carol', 'ceo', 'dave', 'erin', 'frank', 'gina'] as const;
type User = (typeof USERS)[number];

// alice: ExternalStaff → AllowExternalAccess           (one level of nesting)
// bob:   in no policy group (only in Unrelated)
// carol: MobileUsers
// ceo:   in no group; named by user in the mobile rule
// dave:  AllowExternalAccess directly, and Contractors → Blocked (a deny group, named by DN)
// erin:  Level3 → Level2 → Level1 → AllowExternalAccess  (three levels)
// frank: CycleA ⇄ CycleB → MobileUsers                   (a membership cycle)
// gina:  only in Unrelated (in no rule); EmptyAllow, which the empty-group rule names, has no members
const usersYaml = (hash: string) => `
users:
${USERS.map((u) => `  ${u}: { password: '${hash}' }`).join('\n')}
groups:
  AllowExternalAccess: { members: [ExternalStaff, dave, Level1] }
  ExternalStaff: { members: [alice] }
  MobileUsers: { members: [carol, CycleB] }
  Blocked: { members: [Contractors] }
  Contractors: { members: [dave] }
  Level1: { members: [Level2] }
  Level2: { members: [Level3] }
  Level3: { members: [erin] }
  CycleA: { members: [CycleB, frank] }
  CycleB: { members: [CycleA] }
  EmptyAllow: { members: [] }
  Unrelated: { members: [bob, gina] }
`;

const policyYaml = (mode: 'enforce' | 'report-only') => `
mode: ${mode}
rules:
  - id: outlook
    services: [mapi, ews, autodiscover]
    allow: { groups: [AllowExternalAccess] }
  - id: mobile
    services: [activesync]
    allow: { groups: [allowexternalaccess, MobileUsers], users: [ceo] }
  - id: no-legacy-no-admin
    services: [rpc, ecp, powershell, mrsproxy]
    deny: all
  # Listed after the allow rules on purpose: a matching deny wins whatever the order.
  - id: blocked
    services: [mapi, ews, activesync, owa]
    deny: { groups: ['CN=Blocked,CN=Users,DC=lab,DC=test'] }
  - id: owa-everyone
    services: [owa]
    allow: authenticated
  - id: no-owa-for-bob
    services: [owa]
    deny: { users: [bob@lab.test] }
  - id: oab-nobody
    services: [oab]
    allow: { groups: [] }
  - id: empty-group
    services: [autodiscover]
    allow: { groups: [EmptyAllow] }
  # api: no rule at all
`;

let dir: string;
let directory: FileDirectory;
let enforce: Policy;
let reportOnly: Policy;
const principals = new Map<User, Principal>();
const reportOnlyPrincipals = new Map<User, Principal>();

async function principalOf(user: User, policy: Policy): Promise<Principal> {
  const account = await directory.findAccount({ kind: 'sam', sam: user, display: `LAB\\${user}` });
  if (!account) throw new Error(`fixture user ${user} not found`);
  return { dn: account.dn, groups: await directory.memberships(account, policy.groupDns) };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'exgate-authorize-'));
  writeFileSync(join(dir, 'users.yaml'), usersYaml(fastHash(PASSWORD)));
  writeFileSync(join(dir, 'policy.yaml'), policyYaml('enforce'));
  writeFileSync(join(dir, 'policy-report-only.yaml'), policyYaml('report-only'));
  directory = FileDirectory.load({
    type: 'file',
    path: join(dir, 'users.yaml'),
    baseDn: 'DC=lab,DC=test',
    netbiosDomain: 'LAB',
    upnSuffixes: ['lab.test'],
  });
  enforce = await loadPolicy(join(dir, 'policy.yaml'), directory, DOMAIN);
  reportOnly = await loadPolicy(join(dir, 'policy-report-only.yaml'), directory, DOMAIN);
  for (const u of USERS) {
    principals.set(u, await principalOf(u, enforce));
    reportOnlyPrincipals.set(u, await principalOf(u, reportOnly));
  }
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

const allowed = (rule: string): Decision => ({ allow: true, reason: 'allowed', rule });
const denied = (rule: string): Decision => ({ allow: false, reason: 'denied-by-rule', rule });
const notAllowed: Decision = { allow: false, reason: 'not-allowed', rule: null };
const reportOnlyAs = (rule: string | null): Decision => ({ allow: true, reason: 'report-only', rule });

describe('fixture sanity', () => {
  it('the fast hashes verify and memberships are lowercase DNs of policy groups only', async () => {
    const alice = await directory.findAccount({ kind: 'sam', sam: 'alice', display: 'LAB\\alice' });
    expect(alice).not.toBeNull();
    if (!alice) return;
    expect(await directory.verifyPassword(alice, PASSWORD)).toEqual({ ok: true });
    expect([...(principals.get('alice')?.groups ?? [])]).toEqual(['cn=allowexternalaccess,cn=users,dc=lab,dc=test']);
    expect(principals.get('bob')?.groups.size).toBe(0); // Unrelated is in no rule, so it is not looked up
    expect([...(principals.get('dave')?.groups ?? [])].sort()).toEqual([
      'cn=allowexternalaccess,cn=users,dc=lab,dc=test',
      'cn=blocked,cn=users,dc=lab,dc=test',
    ]);
  });
});

describe('authorize (mode: enforce)', () => {
  const rows: [user: User, service: Service, expected: Decision][] = [
    // allow by (nested) group
    ['alice', 'mapi', allowed('outlook')],
    ['alice', 'ews', allowed('outlook')],
    ['alice', 'autodiscover', allowed('outlook')],
    ['alice', 'activesync', allowed('mobile')],
    ['erin', 'mapi', allowed('outlook')], // three levels of nesting
    ['frank', 'activesync', allowed('mobile')], // through a membership cycle
    ['carol', 'activesync', allowed('mobile')],
    // allow by user
    ['ceo', 'activesync', allowed('mobile')],
    // allow: authenticated
    ['alice', 'owa', allowed('owa-everyone')],
    ['carol', 'owa', allowed('owa-everyone')],
    ['gina', 'owa', allowed('owa-everyone')],
    // deny beats allow: group (nested, named by DN) and user
    ['dave', 'mapi', denied('blocked')],
    ['dave', 'ews', denied('blocked')],
    ['dave', 'activesync', denied('blocked')],
    ['dave', 'owa', denied('blocked')], // beats allow: authenticated
    ['dave', 'autodiscover', allowed('outlook')], // `blocked` does not cover it
    ['bob', 'owa', denied('no-owa-for-bob')], // deny by user beats allow: authenticated
    // deny: all
    ['alice', 'ecp', denied('no-legacy-no-admin')],
    ['alice', 'rpc', denied('no-legacy-no-admin')],
    ['ceo', 'powershell', denied('no-legacy-no-admin')],
    ['dave', 'mrsproxy', denied('no-legacy-no-admin')],
    // default deny
    ['bob', 'mapi', notAllowed],
    ['bob', 'activesync', notAllowed],
    ['carol', 'mapi', notAllowed],
    ['ceo', 'mapi', notAllowed],
    ['frank', 'ews', notAllowed],
    ['gina', 'autodiscover', notAllowed], // EmptyAllow has no members
    // an empty group list allows nobody
    ['alice', 'oab', notAllowed],
    ['ceo', 'oab', notAllowed],
    // a service no rule names
    ['alice', 'api', notAllowed],
    ['ceo', 'api', notAllowed],
  ];
  it.each(rows)('%s, %s → %j', (user, service, expected) => {
    expect(authorize(service, principals.get(user) as Principal, enforce)).toEqual(expected);
  });

  it('matches a user rule whatever the case of the principal DN', () => {
    const ceo = principals.get('ceo') as Principal;
    expect(authorize('activesync', { dn: ceo.dn.toUpperCase(), groups: new Set() }, enforce)).toEqual(
      allowed('mobile'),
    );
  });

  it('a principal nobody knows gets only what `authenticated` gives', () => {
    const stranger: Principal = {
      dn: 'CN=Stranger,CN=Users,DC=lab,DC=test',
      groups: new Set(['cn=somewhere,dc=lab,dc=test']),
    };
    expect(authorize('owa', stranger, enforce)).toEqual(allowed('owa-everyone'));
    expect(authorize('mapi', stranger, enforce)).toEqual(notAllowed);
    expect(authorize('ecp', stranger, enforce)).toEqual(denied('no-legacy-no-admin'));
  });
});

describe('authorize (mode: report-only)', () => {
  const rows: [user: User, service: Service, expected: Decision][] = [
    // allowed stays allowed, with its rule
    ['alice', 'mapi', allowed('outlook')],
    ['ceo', 'activesync', allowed('mobile')],
    ['carol', 'owa', allowed('owa-everyone')],
    // a would-be denial is let through and names the rule that would have denied it
    ['alice', 'ecp', reportOnlyAs('no-legacy-no-admin')],
    ['dave', 'mapi', reportOnlyAs('blocked')],
    ['dave', 'owa', reportOnlyAs('blocked')],
    ['bob', 'owa', reportOnlyAs('no-owa-for-bob')],
    // a would-be default deny has no rule to name
    ['bob', 'mapi', reportOnlyAs(null)],
    ['alice', 'oab', reportOnlyAs(null)],
    ['alice', 'api', reportOnlyAs(null)],
  ];
  it.each(rows)('%s, %s → %j', (user, service, expected) => {
    expect(authorize(service, reportOnlyPrincipals.get(user) as Principal, reportOnly)).toEqual(expected);
  });
});

describe('authorizeAnonymous: what is decided before asking for credentials', () => {
  const rows: [service: Service, enforced: Decision | null][] = [
    ['rpc', denied('no-legacy-no-admin')],
    ['ecp', denied('no-legacy-no-admin')],
    ['powershell', denied('no-legacy-no-admin')],
    ['mrsproxy', denied('no-legacy-no-admin')],
    ['api', notAllowed], // no rule allows it
    ['mapi', null],
    ['ews', null],
    ['activesync', null],
    ['owa', null],
    ['autodiscover', null],
  ];
  it.each(rows)('enforce: %s → %j', (service, expected) => {
    expect(authorizeAnonymous(service, enforce)).toEqual(expected);
  });

  it.each(rows.map(([service]) => service))(
    'report-only: %s → null (authenticate, then log the would-be denial)',
    (service) => {
      expect(authorizeAnonymous(service, reportOnly)).toBeNull();
    },
  );

  it('agrees with authorize for every user whenever it answers', () => {
    for (const [service, expected] of rows) {
      if (expected === null) continue;
      for (const user of USERS)
        expect(authorize(service, principals.get(user) as Principal, enforce), `${user} ${service}`).toEqual(expected);
    }
  });

  it('enforce: oab (allowed only by an empty group list) → not-allowed without credentials', () => {
    expect(authorizeAnonymous('oab', enforce)).toEqual(notAllowed);
  });
});

describe('ruleMatches: each rule as authorize weighs it (what `explain` shows)', () => {
  const shown = (user: User | null, service: Service) =>
    ruleMatches(service, user ? (principals.get(user) as Principal) : null, enforce).map(({ rule, matched }) => [
      rule.id,
      rule.effect,
      matched,
    ]);

  it('lists deny rules first, then allow rules, each with whether it names the user', () => {
    expect(shown('dave', 'owa')).toEqual([
      ['blocked', 'deny', true],
      ['no-owa-for-bob', 'deny', false],
      ['owa-everyone', 'allow', true],
    ]);
    expect(shown('ceo', 'activesync')).toEqual([
      ['blocked', 'deny', false],
      ['mobile', 'allow', true],
    ]);
    expect(shown('alice', 'oab')).toEqual([['oab-nobody', 'allow', false]]);
    expect(shown('alice', 'api')).toEqual([]);
  });

  it('matches nothing for no account, not even `authenticated` or `deny: all`', () => {
    expect(shown(null, 'owa')).toEqual([
      ['blocked', 'deny', false],
      ['no-owa-for-bob', 'deny', false],
      ['owa-everyone', 'allow', false],
    ]);
    expect(shown(null, 'ecp')).toEqual([['no-legacy-no-admin', 'deny', false]]);
  });

  it('agrees with authorize for every user and service: the first rule that matches decides', () => {
    for (const service of SERVICES) {
      for (const user of USERS) {
        const principal = principals.get(user) as Principal;
        const first = ruleMatches(service, principal, enforce).find((m) => m.matched)?.rule;
        const expected: Decision = !first ? notAllowed : first.effect === 'deny' ? denied(first.id) : allowed(first.id);
        expect(authorize(service, principal, enforce), `${user} ${service}`).toEqual(expected);
      }
    }
  });
});

describe('authorize over an indexed policy (issue 16): the same answers as trying each rule in turn', () => {
  it('agrees with a rule-by-rule walk on 300 random policies and principals', () => {
    let seed = 42;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const groupDn = (i: number) => `cn=g${i},dc=lab`;
    for (let round = 0; round < 300; round++) {
      const rules = Array.from({ length: 1 + rand(30) }, (_, i) => ({
        id: `r${i}`,
        effect: rand(3) === 0 ? ('deny' as const) : ('allow' as const),
        services: ['owa' as Service],
        everyone: rand(25) === 0,
        groups: new Set(Array.from({ length: rand(6) }, () => groupDn(rand(20)))),
        users: new Set(rand(5) === 0 ? [`cn=u${rand(4)},dc=lab`] : []),
      }));
      const policy = {
        mode: 'enforce',
        version: `v${round}`,
        file: 'random.yaml',
        byService: new Map([
          ['owa', { deny: rules.filter((r) => r.effect === 'deny'), allow: rules.filter((r) => r.effect === 'allow') }],
        ]),
      } as unknown as Policy;
      const principal: Principal = {
        dn: `CN=U${rand(4)},DC=lab`,
        groups: new Set(Array.from({ length: rand(5) }, () => groupDn(rand(20)))),
      };
      const walk = (list: typeof rules) =>
        list.find(
          (r) =>
            r.everyone || r.users.has(principal.dn.toLowerCase()) || [...r.groups].some((g) => principal.groups.has(g)),
        );
      const deny = walk(rules.filter((r) => r.effect === 'deny'));
      const allow = walk(rules.filter((r) => r.effect === 'allow'));
      const expected: Decision = deny ? denied(deny.id) : allow ? allowed(allow.id) : notAllowed;
      expect(authorize('owa', principal, policy), `round ${round}`).toEqual(expected);
    }
  });
});
