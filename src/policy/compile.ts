/**
 * compilePolicy: the policy file → a frozen, indexed Policy. Every group and user it names is
 * resolved against the directory at load time; a name that does not resolve is an error that
 * names it (a typo must never silently mean "nobody" or "everybody").
 */
import { createHash } from 'node:crypto';
import { parseLogon, type LogonDomain } from '../auth/credentials.js';
import { keyPath } from '../config/yaml.js';
import { dnKey, type Account, type Directory, type GroupRef } from '../directory/directory.js';
import { ConfigError } from '../errors.js';
import { SERVICES, type Service } from '../pipeline/services.js';
import type { RuleFile } from './schema.js';
import { readPolicy, type NameRef } from './structure.js';

/** One rule, ready for authorize(): principals as lowercase DNs. */
export interface Rule {
  readonly id: string;
  readonly effect: 'allow' | 'deny';
  readonly services: readonly Service[];
  /** `allow: authenticated` or `deny: all`. */
  readonly everyone: boolean;
  readonly groups: ReadonlySet<string>;
  readonly users: ReadonlySet<string>;
}

export interface Policy {
  readonly mode: 'enforce' | 'report-only';
  /** Content hash of the file: part of every cached decision's key, so a reload invalidates them. */
  readonly version: string;
  readonly file: string;
  /** Per service, deny rules and allow rules in file order. */
  readonly byService: ReadonlyMap<Service, { readonly deny: readonly Rule[]; readonly allow: readonly Rule[] }>;
  /** Every group DN any rule names (lowercase): the only memberships worth looking up. */
  readonly groupDns: readonly string[];
  /** DN → sAMAccountName, for explain and logs. */
  readonly groupNames: ReadonlyMap<string, string>;
}

/**
 * Reads, validates and compiles a policy file. Throws ConfigError listing every problem: the
 * schema's, the rules' structure, and every group and user name that does not resolve.
 */
export async function loadPolicy(file: string, directory: Directory, domain: LogonDomain): Promise<Policy> {
  const text = readPolicy(file);
  const problems = [...text.problems];
  const at = (path: readonly (string | number)[], message: string) =>
    problems.push({ file, key: keyPath(path), line: text.yaml.lineOf(path), message });
  const resolved = await resolveNames(text.names, directory, domain, at);
  if (problems.length > 0 || !text.parsed) throw new ConfigError(problems);

  const groupNames = new Map<string, string>();
  const rules = text.parsed.rules.map((r) => compileRule(r, resolved, groupNames));
  return Object.freeze({
    mode: text.parsed.mode,
    // The text and what its names resolved to: a group renamed or moved in AD is a new policy.
    version: createHash('sha256')
      .update(text.yaml.text)
      .update(JSON.stringify([...groupNames.keys()]))
      .digest('hex')
      .slice(0, 16),
    file,
    byService: index(rules),
    groupDns: [...groupNames.keys()],
    groupNames,
  });
}

interface Resolved {
  readonly groups: ReadonlyMap<string, GroupRef | null>;
  readonly users: ReadonlyMap<string, Account | null>;
}

/** Looks every name up once; a name that does not resolve is a problem at each place it stands. */
async function resolveNames(
  names: readonly NameRef[],
  directory: Directory,
  domain: LogonDomain,
  at: (path: readonly (string | number)[], message: string) => void,
): Promise<Resolved> {
  const groups = new Map<string, GroupRef | null>();
  const users = new Map<string, Account | null>();
  for (const ref of names) {
    if (ref.kind === 'group') {
      if (!groups.has(ref.name)) groups.set(ref.name, await directory.resolveGroup(ref.name));
      if (!groups.get(ref.name)) at(ref.path, `group ${ref.name} not found in the directory`);
    } else {
      if (!users.has(ref.name)) {
        const logon = parseLogon(ref.name, domain);
        users.set(ref.name, logon.kind === 'refused' ? null : await directory.findAccount(logon));
      }
      if (!users.get(ref.name)) at(ref.path, `user ${ref.name} not found in the directory`);
    }
  }
  return { groups, users };
}

/** One rule of a policy that validated and whose names all resolved. */
function compileRule(r: RuleFile, resolved: Resolved, groupNames: Map<string, string>): Rule {
  const effect = r.allow !== undefined ? 'allow' : 'deny';
  // A rule with neither never gets here: readPolicy reported it.
  const spec = r.allow ?? r.deny ?? { groups: [], users: [] };
  if (spec === 'authenticated' || spec === 'all') {
    return { id: r.id, effect, services: r.services, everyone: true, groups: new Set(), users: new Set() };
  }
  const groups = new Set<string>();
  for (const name of spec.groups) {
    const group = resolved.groups.get(name);
    if (!group) continue;
    groups.add(dnKey(group.dn));
    groupNames.set(dnKey(group.dn), group.name);
  }
  const users = new Set<string>();
  for (const name of spec.users) {
    const account = resolved.users.get(name);
    if (account) users.add(dnKey(account.dn));
  }
  return { id: r.id, effect, services: r.services, everyone: false, groups, users };
}

function index(rules: readonly Rule[]): Policy['byService'] {
  const map = new Map<Service, { deny: Rule[]; allow: Rule[] }>();
  for (const s of SERVICES) map.set(s, { deny: [], allow: [] });
  for (const rule of rules) {
    for (const s of rule.services) map.get(s)?.[rule.effect].push(rule);
  }
  return map;
}
