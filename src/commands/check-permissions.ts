/**
 * `exgate check`'s file access: can the service user read every file the gateway reads and write
 * its access log? Asked of the kernel as that user (`runuser -u USER -- test -r FILE`), so groups,
 * ACLs and the folders on the way count exactly as they will for `serve`; mode bits alone miss them.
 * (systemd's own sandbox, e.g. ProtectSystem=strict, is not modelled: LogsDirectory covers the log.)
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { appendProblem } from '../runtime/access-file.js';
import type { Config } from '../config/load.js';
import { readYaml } from '../config/yaml.js';
import type { ConfigProblem } from '../errors.js';
import type { Locate } from './check-upstream.js';

const run = promisify(execFile);

/** The unit the shipped deploy/exgate.service installs as; its User= is the default user. */
const UNIT_FILES = ['/etc/systemd/system', '/usr/lib/systemd/system', '/lib/systemd/system'].map(
  (d) => `${d}/exgate.service`,
);

/** A file the gateway needs, the key that names it, and whether it reads or writes it. */
export interface FileNeed {
  readonly path: readonly (string | number)[];
  readonly file: string;
  readonly write: boolean;
}

/** Every file `serve` reads or writes, from the config as written (paths relative to it). */
export function filesOf(config: Config): FileNeed[] {
  type Raw = { upstream?: { ca?: string }; directory?: { ca?: string; bindPasswordFile?: string } };
  const data = (readYaml(config.file).data ?? {}) as Raw;
  const rel = (p: string) => (isAbsolute(p) ? p : resolve(dirname(config.file), p));
  const needs: FileNeed[] = [
    { path: [], file: config.file, write: false },
    { path: ['policyFile'], file: config.policyFile, write: false },
  ];
  // A selfSigned pair not generated yet is written by `serve`: its folder must be writable.
  const generate = config.tls.selfSigned && !(existsSync(config.tls.cert) && existsSync(config.tls.key));
  needs.push({ path: ['tls', 'cert'], file: config.tls.cert, write: generate });
  needs.push({ path: ['tls', 'key'], file: config.tls.key, write: generate });
  const read = (path: string[], file: string | undefined) => {
    if (file) needs.push({ path, file: rel(file), write: false });
  };
  read(['upstream', 'ca'], data.upstream?.ca);
  read(['directory', 'ca'], data.directory?.ca);
  read(['directory', 'bindPasswordFile'], data.directory?.bindPasswordFile);
  if (config.directory.type === 'file') read(['directory', 'path'], config.directory.path);
  if (config.log.access !== 'stdout') needs.push({ path: ['log', 'access'], file: config.log.access, write: true });
  return needs;
}

/** The log as this process sees it: log.access, when a file, can be appended to (or created). */
export function logProblems(config: Config, at: Locate): ConfigProblem[] {
  if (config.log.access === 'stdout') return [];
  const why = appendProblem(config.log.access); // what serve's start-up refuses too
  return why === null ? [] : [at(['log', 'access'], `cannot open ${config.log.access}: ${why}`)];
}

/**
 * The user `serve` runs as: `--as-user`, else (as root) the User= of the installed exgate.service
 * unit and its drop-ins, else (not root) this process's own user. null when root and no unit says.
 */
export function serviceUser(asUser: string | undefined): string | null {
  if (asUser) return asUser;
  if (process.getuid?.() !== 0) return userInfo().username;
  let user: string | null = null;
  for (const unit of UNIT_FILES) {
    if (!existsSync(unit)) continue;
    const dir = `${unit}.d`;
    const dropIns = existsSync(dir)
      ? readdirSync(dir)
          .filter((f) => f.endsWith('.conf'))
          .sort()
      : [];
    for (const f of [unit, ...dropIns.map((d) => join(dir, d))]) {
      for (const m of readFileSync(f, 'utf8').matchAll(/^\s*User\s*=\s*(\S*)\s*$/gm)) user = m[1] || null;
    }
    break; // the first unit found is the one systemd loads
  }
  return user;
}

/** Every need `user` cannot meet, each naming its key. Needs root unless `user` is this process's own. */
export async function permissionProblems(config: Config, user: string, at: Locate): Promise<ConfigProblem[]> {
  const self = user === userInfo().username;
  if (!self && process.getuid?.() !== 0) {
    return [at([], `cannot check access as ${user}: run exgate check as root (or as ${user})`)];
  }
  if (!self && !(await succeeds('id', ['-u', user]))) return [at([], `cannot check access as ${user}: no such user`)];
  const problems: ConfigProblem[] = [];
  for (const need of filesOf(config)) {
    const target = need.write && !existsSync(need.file) ? existingFolder(need.file) : need.file;
    const tests = need.write ? (target === need.file ? ['-w'] : ['-w', '-x']) : ['-r'];
    const asUser = self ? [] : ['runuser', '-u', user, '--'];
    const ok = await allSucceed(tests.map((t) => [...asUser, 'test', t, target]));
    if (ok) continue;
    const verb = need.write ? (target === need.file ? 'write' : `create files in ${target} to write`) : 'read';
    problems.push(at(need.path, `user ${user} cannot ${verb} ${need.file}${await describe(target)}`));
  }
  return problems;
}

/** The nearest folder above `file` that exists: `serve` creates the rest (mkdir -p). */
function existingFolder(file: string): string {
  let dir = dirname(file);
  while (!existsSync(dir) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
}

async function allSucceed(commands: string[][]): Promise<boolean> {
  for (const [cmd, ...args] of commands) if (!(await succeeds(cmd as string, args))) return false;
  return true;
}

async function succeeds(cmd: string, args: string[]): Promise<boolean> {
  try {
    await run(cmd, args, { timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}

/** ` (mode 0600, owner root:root)`, the usual reason, or '' when stat cannot say. */
async function describe(file: string): Promise<string> {
  try {
    const { stdout } = await run('stat', ['-L', '-c', '%a %U:%G', file], { timeout: 10_000 });
    const [mode, owner] = stdout.trim().split(' ');
    return ` (mode ${(mode ?? '').padStart(4, '0')}, owner ${owner})`;
  } catch {
    return '';
  }
}
