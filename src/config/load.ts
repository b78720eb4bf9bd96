/**
 * loadConfig: gateway YAML → validated, resolved, frozen Config. Every problem is collected and
 * reported at once with file, key and line; `exgate check` runs exactly this (plus the policy).
 * Paths are relative to the folder of the file that names them.
 */
import { existsSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, isAbsolute, resolve } from 'node:path';
import { nameTable } from '../pipeline/classify.js';
import { ConfigError, type ConfigProblem } from '../errors.js';
import { SERVICE_DEFAULTS, SERVICES, type Service, type ServiceDefaults } from '../pipeline/services.js';
import { gatewaySchema, type GatewayFile } from './schema.js';
import { resolveUpstream } from './upstream.js';
import { resolveState } from './state-load.js';
import type { Config, FileSettings, LdapSettings } from './types.js';
import { keyPath, readYaml, Secret, validate, type YamlFile } from './yaml.js';

export type { Config, FileSettings, LdapSettings } from './types.js';

/** Loads and validates a gateway config file; throws ConfigError listing every problem. */
export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): Config {
  const path = resolve(file);
  const yaml = readYaml(path);
  const problems: ConfigProblem[] = [];
  let raw: GatewayFile;
  try {
    raw = validate(gatewaySchema, yaml);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    // Report the file and environment problems too, as far as the sections they need did parse.
    const partial = parsedSections(yaml);
    if (partial) resolveConfig(partial, yaml, env, problems);
    throw new ConfigError([...err.problems, ...problems]);
  }
  const config = resolveConfig(raw, yaml, env, problems);
  if (problems.length > 0) throw new ConfigError(problems);
  return deepFreeze(config);
}

/**
 * The sections resolveConfig reads, each validated alone, so that file and environment problems are reported beside
 * the schema's. A section that failed takes its default (an optional one is absent): resolveConfig assumes every
 * section (it crashed on `admin` with a bad `listen`, and on a bad `services`). Null when a required section failed.
 */
function parsedSections(yaml: YamlFile): GatewayFile | null {
  const data = isRecord(yaml.data) ? yaml.data : {};
  const out: Record<string, unknown> = {};
  const failed = new Set<string>();
  for (const [key, schema] of Object.entries(gatewaySchema.shape)) {
    const result = schema.safeParse(data[key]);
    if (!result.success) failed.add(key);
    const value = result.success ? result : schema.safeParse(undefined);
    if (!value.success) return null;
    out[key] = value.data;
  }
  if (failed.has('listen')) out.admin = undefined; // admin.port is checked against listen.port: no made-up clash
  return out as GatewayFile;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function resolveConfig(raw: GatewayFile, yaml: YamlFile, env: NodeJS.ProcessEnv, problems: ConfigProblem[]): Config {
  const dir = dirname(yaml.file);
  const at = (path: readonly PropertyKey[], message: string) =>
    problems.push({ file: yaml.file, key: keyPath(path), line: yaml.lineOf(path), message });
  const rel = (p: string) => (isAbsolute(p) ? p : resolve(dir, p));
  const readPem = (p: string | undefined, key: readonly PropertyKey[]) => {
    if (p === undefined) return undefined;
    try {
      const text = readFileSync(rel(p), 'utf8');
      if (!text.includes('-----BEGIN')) at(key, `${rel(p)} is not a PEM file`);
      return text;
    } catch (err) {
      at(key, `cannot read ${rel(p)}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
      return undefined;
    }
  };

  const tls = { ...raw.tls, cert: rel(raw.tls.cert), key: rel(raw.tls.key) };
  if (!raw.tls.selfSigned) {
    if (!existsSync(tls.cert)) at(['tls', 'cert'], `file not found: ${tls.cert}`);
    if (!existsSync(tls.key)) at(['tls', 'key'], `file not found: ${tls.key}`);
  }

  for (const [i, n] of raw.names.internal.entries()) {
    if (raw.names.external.some((e) => sameName(e, n))) {
      at(['names', 'internal', i], `${n} is also listed as external`);
    }
  }
  const names = {
    ...nameTable(raw.names.external, raw.names.internal, raw.names.noSni),
    externalList: raw.names.external,
    internalList: raw.names.internal,
  };

  const upstream = resolveUpstream(raw.upstream, readPem(raw.upstream.ca, ['upstream', 'ca']), at);

  const directory = resolveDirectory(raw.directory, rel, readPem, at, env);

  if (
    raw.admin &&
    raw.admin.port !== 0 &&
    raw.admin.port === raw.listen.port &&
    hostsOverlap(raw.admin.host, raw.listen.host)
  ) {
    at(['admin', 'port'], `${raw.admin.port} is the public listen port; the admin listener must never share it`);
  }
  const policyFile = rel(raw.policyFile);
  if (!existsSync(policyFile)) at(['policyFile'], `file not found: ${policyFile}`);

  const log = { ...raw.log, access: raw.log.access === 'stdout' ? 'stdout' : rel(raw.log.access) };
  const mailboxFlags = raw.mailboxFlags && {
    ...raw.mailboxFlags,
    runner: raw.mailboxFlags.runner.map((a) => (a.startsWith('./') || a.startsWith('../') ? rel(a) : a)),
  };

  return {
    file: yaml.file,
    workers: raw.workers === 'auto' ? availableParallelism() : raw.workers,
    listen: raw.listen,
    tls,
    names,
    upstream,
    directory,
    policyFile,
    log,
    http: raw.http,
    cache: raw.cache,
    lockout: raw.lockout,
    services: serviceSettings(raw),
    session: raw.session,
    state: resolveState(raw.state, rel, readPem, at, env),
    admin: raw.admin,
    mailboxFlags,
    watched: [
      policyFile,
      tls.cert,
      tls.key,
      ...[
        raw.upstream.ca,
        'ca' in raw.directory ? raw.directory.ca : undefined,
        'bindPasswordFile' in raw.directory ? raw.directory.bindPasswordFile : undefined,
        raw.state.redis?.ca,
        raw.state.redis?.passwordFile,
      ]
        .filter((f): f is string => f !== undefined)
        .map(rel),
      ...(directory.type === 'file' ? [directory.path] : []),
    ],
  };
}

function resolveDirectory(
  raw: GatewayFile['directory'],
  rel: (p: string) => string,
  readPem: (p: string | undefined, key: readonly PropertyKey[]) => string | undefined,
  at: (path: readonly PropertyKey[], message: string) => void,
  env: NodeJS.ProcessEnv,
): LdapSettings | FileSettings {
  if (raw.type === 'file') {
    const path = rel(raw.path);
    if (!existsSync(path)) at(['directory', 'path'], `file not found: ${path}`);
    const baseDn = raw.baseDn ?? suffixToDn(raw.upnSuffixes[0] ?? 'exgate.local');
    return { type: 'file', path, baseDn, netbiosDomain: raw.netbiosDomain, upnSuffixes: raw.upnSuffixes };
  }
  const urls = typeof raw.url === 'string' ? [raw.url] : raw.url;
  urls.forEach((u, i) => {
    if (u.startsWith('ldap:') && !raw.startTls && !raw.allowPlaintext && !isLoopback(new URL(u).hostname)) {
      at(
        ['directory', 'url', ...(typeof raw.url === 'string' ? [] : [i])],
        'ldap:// without startTls sends every password in clear; use ldaps://, startTls: true (or allowPlaintext: true, lab only)',
      );
    }
  });
  if (raw.startTls) {
    urls.forEach((u, i) => {
      if (u.startsWith('ldaps:'))
        at(
          ['directory', 'url', ...(typeof raw.url === 'string' ? [] : [i])],
          'startTls needs an ldap:// URL (ldaps:// is TLS already)',
        );
    });
  }
  let password = '';
  if ((raw.bindPasswordEnv === undefined) === (raw.bindPasswordFile === undefined)) {
    at(['directory'], 'give exactly one of bindPasswordEnv and bindPasswordFile');
  } else if (raw.bindPasswordEnv !== undefined) {
    const value = env[raw.bindPasswordEnv];
    if (!value) at(['directory', 'bindPasswordEnv'], `environment variable ${raw.bindPasswordEnv} is not set`);
    password = value ?? '';
  } else if (raw.bindPasswordFile !== undefined) {
    try {
      password = readFileSync(rel(raw.bindPasswordFile), 'utf8').replace(/\r?\n$/, '');
      if (!password) at(['directory', 'bindPasswordFile'], 'file is empty');
    } catch (err) {
      at(
        ['directory', 'bindPasswordFile'],
        `cannot read ${rel(raw.bindPasswordFile)}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
      );
    }
  }
  return {
    type: 'ldap',
    urls,
    ca: readPem(raw.ca, ['directory', 'ca']),
    startTls: raw.startTls,
    bindDn: raw.bindDn,
    bindPassword: new Secret(password),
    baseDn: raw.baseDn,
    bindPasswordKey: raw.bindPasswordEnv === undefined ? 'bindPasswordFile' : 'bindPasswordEnv',
    netbiosDomain: raw.netbiosDomain,
    upnSuffixes: raw.upnSuffixes,
    connectTimeoutMs: raw.connectTimeoutMs,
    timeoutMs: raw.timeoutMs,
    maxConcurrentBinds: raw.maxConcurrentBinds,
    maxQueuedBinds: raw.maxQueuedBinds,
    dcRetrySeconds: raw.dcRetrySeconds,
  };
}

/** Could two listeners on these hosts and one port collide (the same host, or a wildcard)? */
function hostsOverlap(a: string, b: string): boolean {
  const wildcard = (h: string) => h === '0.0.0.0' || h === '::' || h === '[::]';
  return wildcard(a) || wildcard(b) || a.toLowerCase() === b.toLowerCase();
}

/** 127.0.0.0/8, ::1 and localhost: traffic that never leaves the machine. */
function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/** DNS names compare case-insensitively and without the root's trailing dot (as nameTable keys them). */
function sameName(a: string, b: string): boolean {
  return a.toLowerCase().replace(/\.$/, '') === b.toLowerCase().replace(/\.$/, '');
}

/** `lab.test` → `DC=lab,DC=test`. */
export function suffixToDn(suffix: string): string {
  return suffix
    .split('.')
    .map((p) => `DC=${p}`)
    .join(',');
}

function serviceSettings(raw: GatewayFile): Record<Service, ServiceDefaults> {
  const out = {} as Record<Service, ServiceDefaults>;
  for (const s of SERVICES) {
    const o = raw.services[s] ?? {};
    const d = SERVICE_DEFAULTS[s];
    out[s] = {
      auth: o.auth ?? d.auth,
      maxBodyBytes: o.maxBodyBytes ?? d.maxBodyBytes,
      idleTimeoutSeconds: o.idleTimeoutSeconds ?? d.idleTimeoutSeconds,
      maxTunnelsPerSource: o.maxTunnelsPerSource ?? d.maxTunnelsPerSource,
    };
  }
  return out;
}

function deepFreeze<T>(value: T): T {
  if (
    value &&
    typeof value === 'object' &&
    !Object.isFrozen(value) &&
    !(value instanceof Secret) &&
    !(value instanceof URL)
  ) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
