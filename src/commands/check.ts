/**
 * `exgate check --config FILE`: load and validate the config and the policy exactly as `serve`
 * does, resolve every group against the directory, and print `ok` or every problem.
 */
import { loadConfig } from '../config/load.js';
import { ConfigError, DirectoryUnavailableError, formatProblem, type ConfigProblem } from '../errors.js';
import { loadPolicy } from '../policy/compile.js';
import { logonDomain, openDirectory } from '../state.js';
import { certificateGaps, loadTlsMaterial } from '../tls.js';
import { existsSync } from 'node:fs';

export async function check(file: string, out: NodeJS.WritableStream = process.stdout): Promise<number> {
  const problems = await findProblems(file);
  if (problems.length === 0) {
    out.write('ok\n');
    return 0;
  }
  for (const p of problems) out.write(formatProblem(p) + '\n');
  return 1;
}

/** Every problem with the config, its files, the policy and the directory; [] when all is well. */
export async function findProblems(file: string): Promise<ConfigProblem[]> {
  const problems: ConfigProblem[] = [];
  const collect = (err: unknown, where: Omit<ConfigProblem, 'message'>) => {
    if (err instanceof ConfigError) problems.push(...err.problems);
    else if (err instanceof DirectoryUnavailableError) problems.push({ ...where, message: err.message });
    else throw err;
  };
  let config;
  try {
    config = loadConfig(file);
  } catch (err) {
    collect(err, { file, key: '' });
    return problems;
  }
  if (!config.tls.selfSigned || (existsSync(config.tls.cert) && existsSync(config.tls.key))) {
    try {
      const material = loadTlsMaterial(config);
      for (const name of certificateGaps(material, config.names.externalList)) {
        problems.push({ file: config.file, key: 'tls.cert', message: `the certificate does not cover ${name}` });
      }
      if (material.notAfter.getTime() < Date.now()) {
        problems.push({ file: config.file, key: 'tls.cert', message: `the certificate expired on ${material.notAfter.toISOString()}` });
      }
    } catch (err) {
      collect(err, { file: config.file, key: 'tls' });
    }
  }
  let directory;
  try {
    directory = openDirectory(config, { warn: () => {} });
  } catch (err) {
    collect(err, { file: config.file, key: 'directory' });
    return problems;
  }
  try {
    await directory.ping();
    await loadPolicy(config.policyFile, directory, logonDomain(config));
  } catch (err) {
    collect(err, { file: config.file, key: 'directory' });
  } finally {
    await directory.close();
  }
  return problems;
}
