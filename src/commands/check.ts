/**
 * `exgate check --config FILE [--as-user USER] [--offline]`: everything that breaks on day one, in
 * one run, area by area: the config, the certificate, AD, the policy and its groups, Exchange, the
 * log and the service user's file access. Prints every problem (file, key, what is wrong), then
 * one line per area (ok, N problems, or skipped and why), then `ok`; exit 0, or 1 on any problem.
 */
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { loadConfig, type Config } from '../config/load.js';
import { keyPath, readYaml } from '../config/yaml.js';
import type { Directory } from '../directory/directory.js';
import {
  ConfigError,
  DirectoryUnavailableError,
  formatProblem,
  ServiceAccountRefusedError,
  type ConfigProblem,
} from '../errors.js';
import { loadPolicy } from '../policy/compile.js';
import { readPolicy } from '../policy/structure.js';
import { logonDomain, openDirectory } from '../runtime/state.js';
import { certificateGaps, loadTlsMaterial } from '../runtime/tls.js';
import { domainProblems } from './check-directory.js';
import { logProblems, permissionProblems, serviceUser } from './check-permissions.js';
import { missingIntermediate } from './check-tls.js';
import { checkPool } from './check-pool.js';
import { probeState } from './check-state.js';
import { probeUpstream, type Locate } from './check-upstream.js';

export interface CheckOptions {
  /** Check file access as this user (needs root). Default: the exgate.service unit's User= when root. */
  readonly asUser?: string | undefined;
  /** Skip what needs the network: an LDAP directory, the names it resolves, Exchange. Default false. */
  readonly offline?: boolean | undefined;
}

type Output = NodeJS.WritableStream;

export interface CheckReport {
  readonly problems: ConfigProblem[];
  /** Worth fixing, but `serve` works: printed, exit 0. */
  readonly warnings: ConfigProblem[];
  /** One line per area: `upstream: ok (…)`, `groups: 2 problems`, `log: skipped (…)`; a pool's health table
   * follows the upstream line, indented. */
  readonly summary: string[];
}

/** `exgate check` with its arguments; resolves to the exit code. */
export async function check(file: string, out: Output = process.stdout, opts: CheckOptions = {}): Promise<number> {
  const { problems, warnings, summary } = await runChecks(file, opts);
  for (const p of problems) out.write(formatProblem(p) + '\n');
  for (const w of warnings) out.write(formatProblem({ ...w, message: `warning: ${w.message}` }) + '\n');
  for (const line of summary) out.write(line + '\n');
  out.write(problems.length === 0 ? 'ok\n' : `${plural(problems.length, 'problem')}\n`);
  return problems.length === 0 ? 0 : 1;
}

/** Every problem with the config, its files, the policy, AD and Exchange; [] when all is well. */
export async function findProblems(file: string, opts: CheckOptions = {}): Promise<ConfigProblem[]> {
  return (await runChecks(file, opts)).problems;
}

/** Collects problems, warnings and the summary line of each area. */
class Areas implements CheckReport {
  readonly problems: ConfigProblem[] = [];
  readonly warnings: ConfigProblem[] = [];
  readonly summary: string[] = [];

  add(area: string, problems: readonly ConfigProblem[], note = '', warnings: readonly ConfigProblem[] = []): void {
    this.problems.push(...problems);
    this.warnings.push(...warnings);
    const status = problems.length > 0 ? plural(problems.length, 'problem') : note ? `ok (${note})` : 'ok';
    this.summary.push(`${area}: ${status}${warnings.length > 0 ? `, ${plural(warnings.length, 'warning')}` : ''}`);
  }

  /** An area not checked; `problems` are still reported (the line saying what was not resolved). */
  skip(area: string, why: string, problems: readonly ConfigProblem[] = []): void {
    this.problems.push(...problems);
    this.summary.push(`${area}: skipped (${why})`);
  }
}

export async function runChecks(file: string, opts: CheckOptions = {}): Promise<CheckReport> {
  const areas = new Areas();
  let config: Config;
  try {
    config = loadConfig(file);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    areas.add('config', err.problems);
    const policy = policyBesideBrokenConfig(file, err.problems);
    areas.add('policy', policy.structure);
    for (const area of ['certificate', 'directory']) areas.skip(area, 'the config has errors');
    areas.skip('groups', 'the config has errors', policy.unresolved);
    for (const area of ['upstream', 'log', 'permissions']) areas.skip(area, 'the config has errors');
    return areas;
  }
  const at = locator(config.file);
  areas.add('config', []);
  const chain = missingIntermediate(config.tls.cert);
  areas.add('certificate', certificateProblems(config), '', chain ? [at(['tls', 'cert'], chain)] : []);
  await directoryAndPolicy(config, areas, at, opts);
  if (opts.offline) areas.skip('upstream', '--offline');
  else {
    // A pool (or a healthCheck): every server, and the health table the gateway's checker would see.
    const up = config.upstream.healthCheck ? await checkPool(config, at) : await probeUpstream(config.upstream, at);
    areas.add('upstream', up.problems, up.note, up.warnings);
    areas.summary.push(...(up.details ?? []));
  }
  if (config.state.redis && opts.offline) areas.skip('state', '--offline');
  else if (config.state.redis) {
    const state = await probeState(config, at);
    areas.add('state', state.problems, state.note);
  }
  areas.add('log', logProblems(config, at), config.log.access === 'stdout' ? 'stdout' : config.log.access);
  const user = serviceUser(opts.asUser);
  if (user === null) {
    areas.skip('permissions', 'no exgate.service unit names the service user; run with --as-user USER');
  } else areas.add('permissions', await permissionProblems(config, user, at), `as ${user}`);
  return areas;
}

function certificateProblems(config: Config): ConfigProblem[] {
  // A selfSigned pair that does not exist yet is generated by `serve`: nothing to check.
  if (config.tls.selfSigned && !(existsSync(config.tls.cert) && existsSync(config.tls.key))) return [];
  const problems: ConfigProblem[] = [];
  try {
    const material = loadTlsMaterial(config);
    for (const name of certificateGaps(material, config.names.externalList)) {
      problems.push({ file: config.file, key: 'tls.cert', message: `the certificate does not cover ${name}` });
    }
    if (material.notAfter.getTime() < Date.now()) {
      const message = `the certificate expired on ${material.notAfter.toISOString()}`;
      problems.push({ file: config.file, key: 'tls.cert', message });
    }
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    problems.push(...err.problems);
  }
  return problems;
}

/**
 * The directory (reachable, and for AD its baseDn, NetBIOS name and UPN suffixes), the policy's
 * structure, and its group and user names resolved as `serve` resolves them.
 */
async function directoryAndPolicy(config: Config, areas: Areas, at: Locate, opts: CheckOptions): Promise<void> {
  const policy = policyWithoutDirectory(config.policyFile);
  const without = (why: string, problems: readonly ConfigProblem[]) => {
    areas.add('directory', problems);
    areas.add('policy', policy.structure);
    areas.skip(
      'groups',
      why,
      policy.unresolved.map((p) => ({ ...p, message: `${p.message}: ${why}` })),
    );
  };
  if (config.directory.type === 'ldap' && opts.offline) {
    // Asked for: the summary says so, and it is no problem.
    areas.skip('directory', '--offline');
    areas.add('policy', policy.structure);
    return areas.skip('groups', '--offline');
  }
  const where = { file: config.file, key: 'directory' };
  let directory;
  try {
    directory = openDirectory(config, { warn: () => {} });
  } catch (err) {
    return without('the directory could not be opened', asProblems(err, where));
  }
  try {
    try {
      await directory.ping();
    } catch (err) {
      const answered = err instanceof DirectoryUnavailableError && err.answered;
      return without(
        answered ? 'the directory answered but cannot be used' : 'the directory is unreachable',
        asProblems(err, where),
      );
    }
    const domain =
      config.directory.type === 'ldap'
        ? await domainProblems(config.directory, at).catch((err: unknown) => ({
            problems: asProblems(err, where),
            baseDnExists: true,
            note: '',
          }))
        : { problems: [], baseDnExists: true, note: `file ${config.directory.path}` };
    if (!domain.baseDnExists) return without('directory.baseDn does not exist', domain.problems);
    areas.add('directory', domain.problems, domain.note);
    areas.add('policy', policy.structure);
    areas.add('groups', await namesAgainstDirectory(config, directory, policy.structure));
  } finally {
    await directory.close();
  }
}

/** The problems loadPolicy finds beyond the structure ones: names that do not resolve. */
async function namesAgainstDirectory(config: Config, directory: Directory, structure: readonly ConfigProblem[]) {
  try {
    await loadPolicy(config.policyFile, directory, logonDomain(config));
    return [];
  } catch (err) {
    const known = new Set(structure.map(formatProblem));
    return asProblems(err, { file: config.file, key: 'directory' }).filter((p) => !known.has(formatProblem(p)));
  }
}

interface PolicyAlone {
  readonly structure: ConfigProblem[];
  /** The line saying names were not resolved; empty when the policy could not be read at all. */
  readonly unresolved: ConfigProblem[];
}

/**
 * The gateway config has errors: still check the policy it names, when `policyFile` can be read
 * from it. A missing policy file is reported unless the config's problems name it already
 * (loadConfig checks it only when the sections it needs are valid).
 */
function policyBesideBrokenConfig(file: string, configProblems: readonly ConfigProblem[]): PolicyAlone {
  const none = { structure: [], unresolved: [] };
  let yaml;
  try {
    yaml = readYaml(resolve(file));
  } catch {
    return none; // unreadable or not YAML: loadConfig said so
  }
  const named = (yaml.data as Record<string, unknown> | null)?.policyFile;
  if (typeof named !== 'string' || named === '') return none; // the schema problems say so
  // Paths are relative to the folder of the file that names them (INTERFACE.md), as in loadConfig.
  const policyFile = resolve(dirname(yaml.file), named);
  if (!existsSync(policyFile)) {
    if (configProblems.some((p) => p.file === yaml.file && p.key === 'policyFile')) return none;
    const line = yaml.lineOf(['policyFile']);
    const missing = { file: yaml.file, key: 'policyFile', line, message: `file not found: ${policyFile}` };
    return { structure: [missing], unresolved: [] };
  }
  const policy = policyWithoutDirectory(policyFile);
  const unresolved = policy.unresolved.map((p) => ({ ...p, message: `${p.message}: the gateway config has errors` }));
  return { ...policy, unresolved };
}

/** The policy's schema and structure problems, and the line to print if its names go unresolved. */
function policyWithoutDirectory(policyFile: string): PolicyAlone {
  try {
    const { problems } = readPolicy(policyFile);
    const unresolved = { file: policyFile, key: '', message: 'groups and users not resolved against the directory' };
    return { structure: [...problems], unresolved: [unresolved] };
  } catch (err) {
    if (err instanceof ConfigError) return { structure: [...err.problems], unresolved: [] }; // unreadable or not YAML
    throw err;
  }
}

function asProblems(err: unknown, where: Omit<ConfigProblem, 'message'>): ConfigProblem[] {
  if (err instanceof ConfigError) return [...err.problems];
  if (err instanceof ServiceAccountRefusedError) return [{ file: where.file, key: err.key, message: err.message }];
  if (err instanceof DirectoryUnavailableError) return [{ ...where, message: err.message }];
  throw err;
}

/** Problems at a key of the gateway config, with the key's line (or its nearest parent's). */
function locator(file: string): Locate {
  const yaml = readYaml(file);
  return (path, message) => ({ file, key: keyPath(path), line: yaml.lineOf(path), message });
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}
