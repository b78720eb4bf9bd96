/**
 * The throwaway Active Directory domain used by the integration tests.
 *
 * Everything here is plain data plus two DN helpers. `test/helpers/samba.ts` provisions a Samba AD DC
 * for this domain and creates exactly these accounts and groups; tests import the same constants to know
 * which names, passwords and expected outcomes to use. Nothing here talks to the network.
 *
 * Conventions that are deliberate (do not "simplify" them away):
 * - Every user's CN differs from its sAMAccountName ("Alice Anders" vs "alice"), so code that builds a DN
 *   from the login name instead of searching for it fails in tests.
 * - Some CNs and one password contain non-ASCII characters, an apostrophe or a colon, which catches
 *   encoding bugs and naive `user:password` splitting (HTTP Basic auth).
 * - All groups live in CN=Users; membership of `AllowExternalAccess` is sometimes only nested (carol).
 */

/** The test domain. Samba provisions it with these values (see `provision()` in samba.ts). */
export const DOMAIN = {
  /** Kerberos realm / DNS domain in upper case. */
  realm: 'LAB.TEST',
  /** DNS domain name, used as the UPN suffix. */
  dnsName: 'lab.test',
  /** NetBIOS (down-level) domain name, as in `LAB\alice`. */
  netbios: 'LAB',
  baseDn: 'DC=lab,DC=test',
  /** Container holding every test user and group. */
  usersDn: 'CN=Users,DC=lab,DC=test',
  /** Host name of the domain controller (the TLS certificate also carries dc1.lab.test). */
  dcHostName: 'dc1',
  dcFqdn: 'dc1.lab.test',
} as const;

/** Built-in domain administrator (set at provisioning time). Only test helpers should use it. */
export const ADMIN = {
  sam: 'Administrator',
  password: 'Adm1nPassw0rd!',
  upn: `Administrator@${DOMAIN.dnsName}`,
  /** `LAB\Administrator`, the form samba-tool needs with `server services = ldap`. */
  downLevel: `${DOMAIN.netbios}\\Administrator`,
  dn: `CN=Administrator,${DOMAIN.usersDn}`,
} as const;

/** userAccountControl flags used by the fixtures. */
export const UAC = {
  ACCOUNTDISABLE: 0x0002,
  NORMAL_ACCOUNT: 0x0200,
  DONT_EXPIRE_PASSWORD: 0x1_0000,
} as const;

/** `groupType` of a global security group (GLOBAL_GROUP | SECURITY_ENABLED = 0x80000002, signed). */
export const GLOBAL_SECURITY_GROUP_TYPE = -2147483646;

/** OID of LDAP_MATCHING_RULE_IN_CHAIN, for transitive (nested) membership filters. */
export const MATCHING_RULE_IN_CHAIN = '1.2.840.113556.1.4.1941';

/**
 * The `data XXX` sub-codes AD puts into the message of a failed bind (resultCode 49), e.g.
 * `80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 52e, v1db1`.
 * Parse with `/data ([0-9a-f]{3})/`.
 */
export const AD_BIND_ERROR = {
  /** Wrong password, unknown user, or empty password. */
  INVALID_CREDENTIALS: '52e',
  /** Correct password, account disabled. */
  ACCOUNT_DISABLED: '533',
  /** Correct password, account expired (accountExpires in the past). */
  ACCOUNT_EXPIRED: '701',
  /** Correct password, user must change password at next logon (pwdLastSet = 0). */
  PASSWORD_MUST_CHANGE: '773',
  /** Account locked out (too many bad passwords). */
  ACCOUNT_LOCKED_OUT: '775',
  /** Password expired (not produced by these fixtures; see research notes). */
  PASSWORD_EXPIRED: '532',
} as const;
export type AdBindErrorCode = (typeof AD_BIND_ERROR)[keyof typeof AD_BIND_ERROR];

/** Windows FILETIME (100 ns intervals since 1601-01-01 UTC) for a JS date, as a decimal string. */
export function toFileTime(date: Date): string {
  return String(BigInt(date.getTime()) * 10_000n + 116_444_736_000_000_000n);
}

/** A fixed instant in the past, used as frank's `accountExpires` (2020-01-01T00:00:00Z). */
export const PAST_ACCOUNT_EXPIRES = toFileTime(new Date(Date.UTC(2020, 0, 1)));

/**
 * Escapes one attribute value for use inside a DN string (RFC 4514 section 2.4).
 * Non-ASCII characters are left as they are (UTF-8 is valid in a DN string).
 */
export function escapeDnValue(value: string): string {
  let out = value.replace(/[\\,+"<>;=]/g, (c) => `\\${c}`).replace(/\0/g, '\\00');
  if (out.startsWith(' ') || out.startsWith('#')) out = `\\${out}`;
  if (out.endsWith(' ') && out.length > 1) out = `${out.slice(0, -1)}\\ `;
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------------------------------

export type GroupName = 'AllowExternalAccess' | 'ExternalStaff' | 'MobileUsers' | 'ExternalDenied';

export interface TestGroup {
  /** CN and sAMAccountName (identical for groups). */
  readonly name: GroupName;
  readonly dn: string;
  readonly description: string;
  /** Groups this group is itself a direct member of (nesting). */
  readonly memberOf: readonly GroupName[];
}

function group(name: GroupName, description: string, memberOf: readonly GroupName[] = []): TestGroup {
  return { name, dn: groupDn(name), description, memberOf };
}

/** All test groups: global security groups in CN=Users. */
export const GROUPS: Readonly<Record<GroupName, TestGroup>> = {
  AllowExternalAccess: group('AllowExternalAccess', 'Policy group: may use Exchange from outside'),
  ExternalStaff: group('ExternalStaff', 'Nested into AllowExternalAccess', ['AllowExternalAccess']),
  MobileUsers: group('MobileUsers', 'Policy group: ActiveSync only'),
  ExternalDenied: group('ExternalDenied', 'Policy group: deny, beats any allow'),
};

/** DN of a group, e.g. `CN=AllowExternalAccess,CN=Users,DC=lab,DC=test`. */
export function groupDn(name: string): string {
  return `CN=${escapeDnValue(name)},${DOMAIN.usersDn}`;
}

// ---------------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------------

/**
 * How the account behaves on a bind with the correct password:
 * - `active`: bind succeeds
 * - `disabled`: userAccountControl 514, bind fails with data 533
 * - `mustChangePassword`: pwdLastSet 0, bind fails with data 773
 * - `expired`: accountExpires in the past, bind fails with data 701
 */
export type AccountState = 'active' | 'disabled' | 'mustChangePassword' | 'expired';

export interface TestUser {
  readonly sam: string;
  /** The RDN value; always different from `sam`. */
  readonly cn: string;
  readonly givenName: string;
  readonly sn: string;
  readonly password: string;
  readonly mail: string;
  /** `<sam>@lab.test` */
  readonly upn: string;
  /** `LAB\<sam>` */
  readonly downLevel: string;
  readonly dn: string;
  /** Direct group memberships. */
  readonly groups: readonly GroupName[];
  readonly state: AccountState;
  /** The AD `data` sub-code a bind with the correct password fails with, or null if it succeeds. */
  readonly bindError: AdBindErrorCode | null;
  /** What the user is for. */
  readonly note: string;
}

const STATE_BIND_ERROR: Record<AccountState, AdBindErrorCode | null> = {
  active: null,
  disabled: AD_BIND_ERROR.ACCOUNT_DISABLED,
  mustChangePassword: AD_BIND_ERROR.PASSWORD_MUST_CHANGE,
  expired: AD_BIND_ERROR.ACCOUNT_EXPIRED,
};

interface UserSpec {
  sam: string;
  givenName: string;
  sn: string;
  password: string;
  groups: readonly GroupName[];
  note: string;
  state?: AccountState;
  /** Defaults to `<sam>@lab.test`. */
  mail?: string;
}

function user(spec: UserSpec): TestUser {
  const cn = `${spec.givenName} ${spec.sn}`;
  return {
    sam: spec.sam,
    cn,
    givenName: spec.givenName,
    sn: spec.sn,
    password: spec.password,
    mail: spec.mail ?? `${spec.sam}@${DOMAIN.dnsName}`,
    upn: `${spec.sam}@${DOMAIN.dnsName}`,
    downLevel: `${DOMAIN.netbios}\\${spec.sam}`,
    dn: `CN=${escapeDnValue(cn)},${DOMAIN.usersDn}`,
    groups: spec.groups,
    state: spec.state ?? 'active',
    bindError: STATE_BIND_ERROR[spec.state ?? 'active'],
    note: spec.note,
  };
}

/**
 * All test users, keyed by sAMAccountName. Passwords satisfy Samba's default complexity rules
 * (3 of 4 character classes, no account name inside).
 */
export const USERS = {
  alice: user({
    sam: 'alice',
    givenName: 'Alice',
    sn: 'Anders',
    password: 'Al1ce-Passw0rd!',
    groups: ['AllowExternalAccess'],
    note: 'direct member of AllowExternalAccess',
  }),
  carol: user({
    sam: 'carol',
    givenName: 'Carol',
    sn: 'Cole',
    password: 'Car0l-Passw0rd!',
    groups: ['ExternalStaff'],
    note: 'nested: ExternalStaff is a member of AllowExternalAccess',
  }),
  bob: user({
    sam: 'bob',
    givenName: 'Bob',
    sn: 'Berg',
    password: 'B0b-Passw0rd!x',
    groups: [],
    note: 'valid account in no policy group',
  }),
  dave: user({
    sam: 'dave',
    givenName: 'Dave',
    sn: 'Dunn',
    password: 'Dav3-Passw0rd!',
    groups: ['AllowExternalAccess'],
    state: 'disabled',
    note: 'disabled (userAccountControl 514)',
  }),
  erin: user({
    sam: 'erin',
    givenName: 'Erin',
    sn: 'Ellis',
    password: 'Er1n-Passw0rd!',
    groups: ['AllowExternalAccess'],
    state: 'mustChangePassword',
    note: 'must change password (pwdLastSet 0)',
  }),
  frank: user({
    sam: 'frank',
    givenName: 'Frank',
    sn: 'Foster',
    password: 'Fr4nk-Passw0rd!',
    groups: ['AllowExternalAccess'],
    state: 'expired',
    note: 'account expired (accountExpires in the past)',
  }),
  zoe: user({
    sam: 'zoe',
    givenName: 'Zoë',
    sn: 'Zimmer',
    password: 'Zoë:Pässwörd€1',
    groups: ['AllowExternalAccess'],
    note: 'password with a colon and non-ASCII characters; non-ASCII CN',
  }),
  mallory: user({
    sam: 'mallory',
    givenName: 'Mallory',
    sn: 'Moss',
    password: 'Mall0ry-Passw0rd!',
    groups: ['AllowExternalAccess', 'ExternalDenied'],
    note: 'allowed and denied: deny must win',
  }),
  henry: user({
    sam: 'henry',
    givenName: 'Henry',
    sn: 'Hale',
    password: 'H3nry-Passw0rd!',
    groups: ['MobileUsers'],
    note: 'member of MobileUsers only',
  }),
  grace: user({
    sam: 'grace',
    givenName: 'Grace',
    sn: 'Green',
    password: 'Gr4ce-Passw0rd!',
    groups: ['AllowExternalAccess'],
    note: 'reserved for lockout tests',
  }),
  obrien: user({
    sam: 'obrien',
    givenName: 'Seán',
    sn: "O'Brien",
    password: 'O-Br1en-Passw0rd!',
    mail: `sean.obrien@${DOMAIN.dnsName}`,
    groups: ['AllowExternalAccess'],
    note: 'apostrophe and non-ASCII in CN; mail differs from sam',
  }),
} as const satisfies Record<string, TestUser>;

export type UserSam = keyof typeof USERS;

/** The gateway's own bind account. Its password never expires (userAccountControl 66048). */
export const SERVICE_ACCOUNT = {
  sam: 'svc-exgate',
  cn: 'Exgate Service',
  password: 'Svc-Exg4te-Passw0rd!',
  upn: `svc-exgate@${DOMAIN.dnsName}`,
  downLevel: `${DOMAIN.netbios}\\svc-exgate`,
  mail: `svc-exgate@${DOMAIN.dnsName}`,
  dn: `CN=Exgate Service,${DOMAIN.usersDn}`,
  userAccountControl: UAC.NORMAL_ACCOUNT | UAC.DONT_EXPIRE_PASSWORD,
} as const;

/**
 * DN of a fixture account by sAMAccountName (any case), including the service account and Administrator.
 * Throws for names that are not fixtures: look those up in the directory instead.
 */
export function userDn(sam: string): string {
  const key = sam.toLowerCase();
  if (key === SERVICE_ACCOUNT.sam) return SERVICE_ACCOUNT.dn;
  if (key === ADMIN.sam.toLowerCase()) return ADMIN.dn;
  const u = (USERS as Record<string, TestUser>)[key];
  if (!u) throw new Error(`userDn: "${sam}" is not a fixture user (known: ${Object.keys(USERS).join(', ')})`);
  return u.dn;
}

/** Fixture users that are (directly or through nesting) members of `name`. */
export function effectiveMembers(name: GroupName): TestUser[] {
  const inChain = (g: GroupName): boolean => g === name || GROUPS[g].memberOf.some(inChain);
  return Object.values(USERS).filter((u: TestUser) => u.groups.some(inChain));
}
