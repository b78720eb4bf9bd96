/**
 * Reading YAML files with problems located by file, key and line, and validating them against a
 * zod schema so that every problem is reported at once (STYLE.md §7).
 */
import { readFileSync } from 'node:fs';
import { inspect } from 'node:util';
import { isMap, isNode, isScalar, LineCounter, parseDocument, type Document } from 'yaml';
import type { z } from 'zod';
import { ConfigError, type ConfigProblem } from '../errors.js';

export interface YamlFile {
  readonly file: string;
  readonly text: string;
  readonly data: unknown;
  /** 1-based line of the node at `path`, or of its nearest existing parent. */
  lineOf(path: readonly PropertyKey[]): number | undefined;
}

/** Reads and parses a YAML file; a missing file or a syntax error is a ConfigError naming the file. */
export function readYaml(file: string): YamlFile {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError([
      { file, key: '', message: `cannot read: ${(err as NodeJS.ErrnoException).code ?? String(err)}` },
    ]);
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      doc.errors.map((e) => ({
        file,
        key: '',
        line: lines.linePos(e.pos[0]).line,
        message: `YAML: ${e.message.split('\n')[0]}`,
      })),
    );
  }
  return { file, text, data: doc.toJS() ?? {}, lineOf: (path) => lineOf(doc, lines, path) };
}

function lineOf(doc: Document, lines: LineCounter, path: readonly PropertyKey[]): number | undefined {
  for (let n = path.length; n >= 0; n--) {
    // A key's own line: a block value starts on the line after its key.
    const parent = n > 0 ? doc.getIn(path.slice(0, n - 1) as unknown[], true) : undefined;
    if (isMap(parent)) {
      const pair = parent.items.find((p) => isScalar(p.key) && p.key.value === path[n - 1]);
      if (pair && isNode(pair.key) && pair.key.range) return lines.linePos(pair.key.range[0]).line;
    }
    const node = doc.getIn(path.slice(0, n) as unknown[], true);
    if (isNode(node) && node.range) return lines.linePos(node.range[0]).line;
  }
  return undefined;
}

/** `rules[2].allow.groups[0]` from a path array. */
export function keyPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out;
}

/** Validates parsed YAML against a schema; returns the value or throws a ConfigError with every problem. */
export function validate<S extends z.ZodType>(schema: S, yaml: YamlFile): z.output<S> {
  const result = schema.safeParse(yaml.data, { reportInput: true }); // tells 'missing' from 'wrong type'
  if (result.success) return result.data;
  const problems: ConfigProblem[] = [];
  for (const issue of result.error.issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const k of issue.keys) {
        const path = [...issue.path, k];
        problems.push({ file: yaml.file, key: keyPath(path), line: yaml.lineOf(path), message: 'unknown key' });
      }
    } else {
      problems.push({
        file: yaml.file,
        key: keyPath(issue.path),
        line: yaml.lineOf(issue.path),
        message: describe(issue),
      });
    }
  }
  throw new ConfigError(problems);
}

function describe(issue: z.core.$ZodIssue): string {
  if (issue.code === 'invalid_type' && issue.input === undefined) return 'is required';
  if (issue.code === 'invalid_value' && 'values' in issue) {
    return `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
  }
  return issue.message.replace(/^Invalid input: /, '');
}

/**
 * A secret read from the environment or a file. It never prints: JSON, `util.inspect` and string
 * conversion all give `[redacted]`, so a logged config cannot leak it.
 */
export class Secret {
  readonly #value: string;
  constructor(value: string) {
    this.#value = value;
  }
  reveal(): string {
    return this.#value;
  }
  toJSON(): string {
    return '[redacted]';
  }
  toString(): string {
    return '[redacted]';
  }
  [inspect.custom](): string {
    return '[redacted]';
  }
}
