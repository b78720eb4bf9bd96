/**
 * A policy file as written, checked without the directory: its schema and the structure of its
 * rules (unique ids, exactly one of allow and deny). Both checks always run, on the file as
 * written, so a schema error never hides a structural one and `exgate check` prints every
 * problem in one run (INTERFACE.md, "print every problem"; STYLE.md §7).
 */
import { readYaml, validate, keyPath, type YamlFile } from '../config/yaml.js';
import { ConfigError, type ConfigProblem } from '../errors.js';
import { policySchema, type PolicyFile } from './schema.js';

/** A group or user name a rule gives, with where it stands (`rules[i].allow.groups[j]`). */
export interface NameRef {
  readonly kind: 'group' | 'user';
  readonly name: string;
  readonly path: readonly (string | number)[];
}

export interface PolicyText {
  readonly yaml: YamlFile;
  /** The validated file; null when the schema found a problem. */
  readonly parsed: PolicyFile | null;
  /** Schema problems, then structural ones, each with file, key and line. */
  readonly problems: readonly ConfigProblem[];
  /**
   * Every name the rules give as a non-empty string in a `groups` or `users` list, in file
   * order: resolvable against the directory even when the schema failed elsewhere in the file.
   */
  readonly names: readonly NameRef[];
}

/**
 * Reads a policy file and checks all that needs no directory. Throws ConfigError only when it
 * cannot be read or parsed as YAML.
 */
export function readPolicy(file: string): PolicyText {
  const yaml = readYaml(file);
  const problems: ConfigProblem[] = [];
  let parsed: PolicyFile | null = null;
  try {
    parsed = validate(policySchema, yaml);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    problems.push(...err.problems);
  }
  const rules = rulesAsWritten(yaml.data);
  problems.push(...structureProblems(rules, yaml));
  return { yaml, parsed, problems, names: namesOf(rules) };
}

type RawRule = { readonly index: number; readonly rule: Record<string, unknown> };

/** The rules that are mappings, with their index; anything else the schema reports. */
function rulesAsWritten(data: unknown): RawRule[] {
  if (!isRecord(data) || !Array.isArray(data.rules)) return [];
  return data.rules.flatMap((rule: unknown, index) => (isRecord(rule) ? [{ index, rule }] : []));
}

function structureProblems(rules: readonly RawRule[], yaml: YamlFile): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const at = (path: (string | number)[], message: string) =>
    problems.push({ file: yaml.file, key: keyPath(path), line: yaml.lineOf(path), message });
  const ids = new Set<string>();
  for (const { index, rule } of rules) {
    // An empty or non-string id is the schema's to report; counting it here would say it twice.
    if (typeof rule.id === 'string' && rule.id !== '') {
      if (ids.has(rule.id)) at(['rules', index, 'id'], `duplicate rule id ${rule.id}`);
      ids.add(rule.id);
    }
    if ((rule.allow === undefined) === (rule.deny === undefined))
      at(['rules', index], 'a rule has exactly one of allow and deny');
  }
  return problems;
}

function namesOf(rules: readonly RawRule[]): NameRef[] {
  const refs: NameRef[] = [];
  for (const { index, rule } of rules) {
    for (const effect of ['allow', 'deny'] as const) {
      const spec = rule[effect];
      if (!isRecord(spec)) continue;
      for (const [list, kind] of [
        ['groups', 'group'],
        ['users', 'user'],
      ] as const) {
        const names = spec[list];
        if (!Array.isArray(names)) continue;
        names.forEach((name: unknown, j) => {
          if (typeof name === 'string' && name !== '')
            refs.push({ kind, name, path: ['rules', index, effect, list, j] });
        });
      }
    }
  }
  return refs;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
