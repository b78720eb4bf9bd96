/**
 * The `file` directory: users, scrypt password hashes and (nested) groups in one YAML file. It
 * keeps the Directory contract exactly as the LDAP one does (password first, then account state;
 * transitive groups), so the demo and labs behave like AD. Production uses `ldap`.
 *
 *   users:
 *     alice: { password: 'scrypt$16384$8$1$<salt>$<hash>', name: Alice Anders, mail: alice@lab.test }
 *     dave:  { password: '…', disabled: true }
 *   groups:
 *     AllowExternalAccess: { members: [alice, ExternalStaff] }   # users or groups
 *     ExternalStaff: { members: [carol] }
 */
import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { readYaml, validate } from '../config/yaml.js';
import type { FileSettings } from '../config/load.js';
import type { Logon } from '../auth/credentials.js';
import { ConfigError, type ConfigProblem } from '../errors.js';
import {
  dnKey,
  looksLikeDn,
  type Account,
  type Directory,
  type GroupRef,
  type AccountStatus,
  type PasswordCheck,
  type PasswordRefusal,
} from './directory.js';

const isoDate = z.union([z.string(), z.date()]).transform((v, ctx) => {
  const t = new Date(v).getTime();
  if (Number.isNaN(t)) ctx.addIssue({ code: 'custom', message: 'expected an ISO date' });
  return t;
});

const userSchema = z.strictObject({
  /** `scrypt$N$r$p$salt$hash` (base64); make one with `exgate hash-password`. */
  password: z
    .string()
    .regex(
      /^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/,
      'expected scrypt$N$r$p$salt$hash (see exgate hash-password)',
    ),
  /** The CN. Default: the user name. */
  name: z.string().min(1).optional(),
  upn: z.string().min(3).optional(),
  mail: z.string().min(3).optional(),
  disabled: z.boolean().default(false),
  locked: z.boolean().default(false),
  mustChangePassword: z.boolean().default(false),
  /** The account stops working at this time. */
  expires: isoDate.optional(),
  /** The password stops working at this time. */
  passwordExpires: isoDate.optional(),
});

const fileSchema = z.strictObject({
  users: z.record(z.string().min(1), userSchema).default({}),
  groups: z
    .record(z.string().min(1), z.strictObject({ members: z.array(z.string().min(1)).default([]) }).prefault({}))
    .default({}),
});

type UserEntry = z.infer<typeof userSchema> & { account: Account };

/** The file directory. Load it with `FileDirectory.load(settings)`. */
export class FileDirectory implements Directory {
  private constructor(
    private readonly users: ReadonlyMap<string, UserEntry>, // key: lowercase sam
    private readonly groups: ReadonlyMap<string, GroupRef & { members: readonly string[] }>, // key: lowercase name
    private readonly now: () => number,
  ) {}

  /** Reads and validates the users file; throws ConfigError naming file and key. */
  static load(settings: FileSettings, now: () => number = Date.now): FileDirectory {
    const yaml = readYaml(settings.path);
    const raw = validate(fileSchema, yaml);
    const users = new Map<string, UserEntry>();
    for (const [sam, u] of Object.entries(raw.users)) {
      const upn = u.upn ?? (settings.upnSuffixes[0] ? `${sam}@${settings.upnSuffixes[0]}` : null);
      const dn = `CN=${escapeRdn(u.name ?? sam)},CN=Users,${settings.baseDn}`;
      users.set(sam.toLowerCase(), {
        ...u,
        account: {
          dn,
          sam,
          user: `${settings.netbiosDomain.toUpperCase()}\\${sam.toLowerCase()}`,
          upn,
          mail: u.mail ?? null,
        },
      });
    }
    const groups = new Map<string, GroupRef & { members: readonly string[] }>();
    for (const [name, g] of Object.entries(raw.groups)) {
      groups.set(name.toLowerCase(), {
        name,
        dn: `CN=${escapeRdn(name)},CN=Users,${settings.baseDn}`,
        members: g.members,
      });
    }
    const problems: ConfigProblem[] = [];
    for (const g of groups.values()) {
      g.members.forEach((m, i) => {
        if (!users.has(m.toLowerCase()) && !groups.has(m.toLowerCase())) {
          const path = ['groups', g.name, 'members', i];
          problems.push({
            file: yaml.file,
            key: `groups.${g.name}.members[${i}]`,
            line: yaml.lineOf(path),
            message: `no user or group named ${m}`,
          });
        }
      });
    }
    for (const u of users.values()) {
      const [, n] = u.password.split('$');
      const N = Number(n);
      if (!(N > 1 && (N & (N - 1)) === 0 && N <= 1 << 20)) {
        problems.push({
          file: yaml.file,
          key: `users.${u.account.sam}.password`,
          line: yaml.lineOf(['users', u.account.sam, 'password']),
          message: 'scrypt N must be a power of two up to 2^20',
        });
      }
    }
    if (problems.length > 0) throw new ConfigError(problems);
    return new FileDirectory(users, groups, now);
  }

  async findAccount(logon: Logon & { kind: 'sam' | 'upn' }): Promise<Account | null> {
    if (logon.kind === 'sam') return this.users.get(logon.sam.toLowerCase())?.account ?? null;
    const upn = logon.upn.toLowerCase();
    for (const u of this.users.values()) if (u.account.upn?.toLowerCase() === upn) return u.account;
    return null;
  }

  async verifyPassword(account: Account, password: string): Promise<PasswordCheck> {
    const u = this.users.get(account.sam.toLowerCase());
    if (!u || !(await verifyHash(u.password, password))) return { ok: false, reason: 'bad-credentials' };
    const refusal = this.statusOf(u);
    return refusal ? { ok: false, reason: refusal } : { ok: true };
  }

  async accountStatus(account: Account): Promise<AccountStatus> {
    const u = this.users.get(account.sam.toLowerCase());
    return { refusal: u ? this.statusOf(u) : 'bad-credentials', passwordSetAt: null };
  }

  /** The order AD reports states in, once the password is right (MS-ADTS 3.1.1.3.1.x sub-codes). */
  private statusOf(u: UserEntry): PasswordRefusal | null {
    if (u.locked) return 'account-locked';
    if (u.disabled) return 'account-disabled';
    if (u.expires !== undefined && u.expires <= this.now()) return 'account-expired';
    if (u.mustChangePassword) return 'password-must-change';
    if (u.passwordExpires !== undefined && u.passwordExpires <= this.now()) return 'password-expired';
    return null;
  }

  async memberships(account: Account, groupDns: readonly string[]): Promise<ReadonlySet<string>> {
    const wanted = new Set(groupDns.map(dnKey));
    const out = new Set<string>();
    for (const g of this.closure(account.sam)) if (wanted.has(dnKey(g.dn))) out.add(dnKey(g.dn));
    return out;
  }

  async groupsOf(account: Account): Promise<readonly GroupRef[]> {
    return [...this.closure(account.sam)].map(({ dn, name }) => ({ dn, name }));
  }

  async resolveGroup(name: string): Promise<GroupRef | null> {
    const key = name.trim().toLowerCase();
    for (const g of this.groups.values()) {
      if (looksLikeDn(name) ? dnKey(g.dn) === key : g.name.toLowerCase() === key) return { dn: g.dn, name: g.name };
    }
    return null;
  }

  async listMailboxes(): Promise<readonly Account[]> {
    return [...this.users.values()].filter((u) => u.account.mail !== null).map((u) => u.account);
  }

  async membersOf(groupDn: string): Promise<ReadonlySet<string>> {
    const key = dnKey(groupDn);
    const out = new Set<string>();
    for (const u of this.users.values()) {
      for (const g of this.closure(u.account.sam)) if (dnKey(g.dn) === key) out.add(dnKey(u.account.dn));
    }
    return out;
  }

  async ping(): Promise<void> {}
  async close(): Promise<void> {}

  /** Every group `member` is in, directly or through other groups (cycles are harmless). */
  private closure(member: string): Set<GroupRef> {
    const found = new Set<GroupRef>();
    const queue = [member.toLowerCase()];
    while (queue.length > 0) {
      const m = queue.shift() as string;
      for (const [key, g] of this.groups) {
        if (!found.has(g) && g.members.some((x) => x.toLowerCase() === m)) {
          found.add(g);
          queue.push(key);
        }
      }
    }
    return found;
  }
}

function escapeRdn(value: string): string {
  return value.replace(/[,+"\\<>;=]/g, (c) => `\\${c}`);
}

const SCRYPT_MAXMEM = 64 * 1024 * 1024;

/** Hashes a password for the users file: scrypt N=16384, r=8, p=1, 16-byte salt. */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const hash = await scryptAsync(password, salt, 32, 16384, 8, 1);
  return `scrypt$16384$8$1$${salt.toString('base64')}$${hash.toString('base64')}`;
}

async function verifyHash(stored: string, password: string): Promise<boolean> {
  const [, n, r, p, salt, hash] = stored.split('$');
  const expected = Buffer.from(hash ?? '', 'base64');
  const actual = await scryptAsync(
    password,
    Buffer.from(salt ?? '', 'base64'),
    expected.length,
    Number(n),
    Number(r),
    Number(p),
  );
  return expected.length > 0 && timingSafeEqual(actual, expected);
}

function scryptAsync(password: string, salt: Buffer, len: number, N: number, r: number, p: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password, salt, len, { N, r, p, maxmem: SCRYPT_MAXMEM }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}
