/**
 * compilePolicy: the policy file → a frozen, indexed Policy. Every group and user it names is
 * resolved against the directory at load time; a name that does not resolve is an error that
 * names it (a typo must never silently mean "nobody" or "everybody").
 */
import { createHash } from 'node:crypto';
import { parseLogon, type LogonDomain } from '../credentials.js';
import { dnKey, type Directory } from '../directory/directory.js';
import { ConfigError, type ConfigProblem } from '../errors.js';
import { SERVICES, type Service } from '../services.js';
import { readYaml, validate, keyPath } from '../config/yaml.js';
import { policySchema, type RuleFile } from './schema.js';

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

/** Reads, validates and compiles a policy file. Throws ConfigError listing every problem. */
export async function loadPolicy(file: string, directory: Directory, domain: LogonDomain): Promise<Policy> {
  const yaml = readYaml(file);
  const raw = validate(policySchema, yaml);
  const problems: ConfigProblem[] = [];
  const at = (path: (string | number)[], message: string) =>
    problems.push({ file, key: keyPath(path), line: yaml.lineOf(path), message });

  const ids = new Set<string>();
  raw.rules.forEach((r, i) => {
    if (ids.has(r.id)) at(['rules', i, 'id'], `duplicate rule id ${r.id}`);
    ids.add(r.id);
    if ((r.allow === undefined) === (r.deny === undefined)) at(['rules', i], 'a rule has exactly one of allow and deny');
  });

  const groupNames = new Map<string, string>();
  const rules: Rule[] = [];
  for (const [i, r] of raw.rules.entries()) {
    const rule = await compileRule(r, i, directory, domain, groupNames, at);
    if (rule) rules.push(rule);
  }
  if (problems.length > 0) throw new ConfigError(problems);

  return Object.freeze({
    mode: raw.mode,
    // The text and what its names resolved to: a group renamed or moved in AD is a new policy.
    version: createHash('sha256').update(yaml.text).update(JSON.stringify([...groupNames.keys()])).digest('hex').slice(0, 16),
    file,
    byService: index(rules),
    groupDns: [...groupNames.keys()],
    groupNames,
  });
}

async function compileRule(
  r: RuleFile, i: number, directory: Directory, domain: LogonDomain,
  groupNames: Map<string, string>, at: (path: (string | number)[], message: string) => void,
): Promise<Rule | null> {
  const effect = r.allow !== undefined ? 'allow' : 'deny';
  const spec = r.allow ?? r.deny;
  if (spec === undefined) return null;
  if (spec === 'authenticated' || spec === 'all') {
    return { id: r.id, effect, services: r.services, everyone: true, groups: new Set(), users: new Set() };
  }
  const groups = new Set<string>();
  for (const [j, name] of spec.groups.entries()) {
    const group = await directory.resolveGroup(name);
    if (!group) at(['rules', i, effect, 'groups', j], `group ${name} not found in the directory`);
    else {
      groups.add(dnKey(group.dn));
      groupNames.set(dnKey(group.dn), group.name);
    }
  }
  const users = new Set<string>();
  for (const [j, name] of spec.users.entries()) {
    const logon = parseLogon(name, domain);
    const account = logon.kind === 'refused' ? null : await directory.findAccount(logon);
    if (!account) at(['rules', i, effect, 'users', j], `user ${name} not found in the directory`);
    else users.add(dnKey(account.dn));
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
