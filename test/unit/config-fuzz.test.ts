// loadConfig never throws anything but a ConfigError whose every problem names file, line and key: a seeded
// generator mutates a full config (unknown keys, wrong types and values, removed keys, in every section).
// It found, and guards, the crashes of issue 10: an unknown key in `listen` beside `admin`, and a bad
// `services` value, used to escape as TypeErrors ("reading 'port'", "reading 'mapi'").
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { ConfigError, type ConfigProblem } from '../../src/errors.js';

const SUPPORT = resolve(dirname(fileURLToPath(import.meta.url)), '../fixtures/configs/support');
const tmp = mkdtempSync(join(tmpdir(), 'exgate-config-fuzz-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

type Tree = { [key: string]: unknown };

/** Every section and most keys set, so that every one can be mutated. */
const LDAP: Tree = {
  listen: { host: '0.0.0.0', port: 8443 },
  workers: 2,
  tls: {
    cert: `${SUPPORT}/gateway.crt`,
    key: `${SUPPORT}/gateway.key`,
    selfSigned: false,
    minVersion: 'TLSv1.2',
    handshakeTimeoutMs: 5000,
  },
  names: { external: ['mail.lab.test'], internal: ['exchange.lab.test'], noSni: 'external' },
  upstream: {
    url: 'https://exchange.lab.test',
    ca: `${SUPPORT}/ca.pem`,
    servername: 'exchange.lab.test',
    insecureSkipVerify: false,
    allowPlaintext: false,
    connectTimeoutMs: 5000,
  },
  directory: {
    type: 'ldap',
    url: ['ldaps://dc1.lab.test:636', 'ldaps://dc2.lab.test'],
    ca: `${SUPPORT}/ca.pem`,
    startTls: false,
    allowPlaintext: false,
    bindDn: 'CN=svc,DC=lab,DC=test',
    bindPasswordFile: `${SUPPORT}/bind-password.txt`,
    baseDn: 'DC=lab,DC=test',
    netbiosDomain: 'LAB',
    upnSuffixes: ['lab.test'],
    connectTimeoutMs: 3000,
    timeoutMs: 5000,
    maxConcurrentBinds: 8,
    maxQueuedBinds: 64,
    dcRetrySeconds: 10,
  },
  policyFile: `${SUPPORT}/policy.yaml`,
  log: { level: 'info', access: 'stdout' },
  http: { shutdownGraceMs: 10000, longPollGraceMs: 5000, headersTimeoutMs: 30000, keepAliveTimeoutMs: 100000 },
  cache: { max: 100, authTtlSeconds: 300, groupTtlSeconds: 60, negativeTtlSeconds: 30, staleIfErrorSeconds: 0 },
  lockout: {
    threshold: 5,
    windowSeconds: 1800,
    sourceAccounts: 10,
    sourceFailures: 50,
    familiarSeconds: 86400,
    max: 1000,
  },
  services: {
    mapi: { auth: 'basic+ntlm', maxBodyBytes: 1024, idleTimeoutSeconds: 360 },
    rpc: { maxTunnelsPerSource: 4 },
    owa: { auth: 'basic' },
  },
  admin: { host: '127.0.0.1', port: 9090 },
  mailboxFlags: {
    runner: ['pwsh', '-File', './session.ps1'],
    flags: {
      MAPIBlockOutlookRpcHttp: { service: 'rpc', allowedValue: false },
      EwsEnabled: { service: 'ews', allowedValue: true },
    },
    batchSize: 50,
    runnerTimeoutSeconds: 600,
    maxBlockShare: 0.1,
    intervalMinutes: 0,
  },
};

const FILE: Tree = {
  ...LDAP,
  directory: {
    type: 'file',
    path: `${SUPPORT}/users.yaml`,
    baseDn: 'DC=lab,DC=test',
    netbiosDomain: 'LAB',
    upnSuffixes: ['lab.test'],
  },
};

/** Values of every wrong type, and wrong values of the right type. */
const WRONG: unknown[] = [
  null,
  -1,
  0,
  3.5,
  1e12,
  '',
  'x',
  'forms',
  'ldap://x',
  'http://10.0.0.1',
  true,
  false,
  [],
  [1],
  ['x', null],
  {},
  { a: 1 },
];

/** A small deterministic PRNG (mulberry32): the same seed, the same configs. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Every path to a value in the tree, maps and lists included. */
function paths(value: unknown, prefix: (string | number)[] = []): (string | number)[][] {
  if (Array.isArray(value)) return value.flatMap((v, i) => [[...prefix, i], ...paths(v, [...prefix, i])]);
  if (typeof value !== 'object' || value === null) return [];
  return Object.entries(value).flatMap(([k, v]) => [[...prefix, k], ...paths(v, [...prefix, k])]);
}

function nodeAt(tree: Tree, path: readonly (string | number)[]): unknown {
  let node: unknown = tree;
  for (const p of path) node = (node as Record<string | number, unknown>)[p];
  return node;
}

function parentOf(tree: Tree, path: readonly (string | number)[]): Record<string | number, unknown> {
  return nodeAt(tree, path.slice(0, -1)) as Record<string | number, unknown>;
}

function keyOf(path: readonly (string | number)[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? p : `.${p}`)).join('');
}

interface Mutation {
  kind: 'unknown' | 'wrong' | 'delete';
  key: string;
  value?: unknown;
}

/** Applies one mutation at a random place; says what it did, so that the test can expect its key. */
function mutate(tree: Tree, next: () => number, n: number): Mutation {
  const pick = <T>(list: readonly T[]): T => list[Math.floor(next() * list.length)]!;
  const all = paths(tree);
  const roll = next();
  if (roll < 0.3) {
    const at = pick([[], ...all.filter((p) => isMap(nodeAt(tree, p)))]);
    const name = pick(['proxyProtocol', 'state', 'Port', 'hots', `extra${n}`]);
    const parent = nodeAt(tree, at) as Tree;
    if (name in parent) return mutate(tree, next, n);
    parent[name] = pick(WRONG);
    return { kind: 'unknown', key: keyOf([...at, name]) };
  }
  const at = pick(all);
  const parent = parentOf(tree, at);
  if (roll < 0.45 && !Array.isArray(parent)) {
    delete parent[at.at(-1)!];
    return { kind: 'delete', key: keyOf(at) };
  }
  const value = pick(WRONG);
  parent[at.at(-1)!] = value;
  return { kind: 'wrong', key: keyOf(at), value };
}

function isMap(v: unknown): boolean {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The problems of loading `tree`, [] when it loads; any other exception fails the test. */
function problemsOf(tree: Tree, name: string): { file: string; problems: readonly ConfigProblem[] } {
  const file = join(tmp, `${name}.yaml`);
  writeFileSync(file, stringify(tree));
  try {
    loadConfig(file, {});
    return { file, problems: [] };
  } catch (err) {
    if (err instanceof ConfigError) return { file, problems: err.problems };
    throw new Error(`${name}: ${stringify(tree)}\nthrew ${String(err)}`);
  }
}

/** The problem names the mutated key, one of its parents, or one of its children. */
function names(p: ConfigProblem, key: string): boolean {
  return p.key === key || key.startsWith(p.key + '.') || key.startsWith(p.key + '[') || p.key.startsWith(key);
}

describe('mutated configs give a named error, never an exception', () => {
  it.each([
    ['ldap', LDAP],
    ['file', FILE],
  ])('the %s base config loads', (name, tree) => {
    expect(problemsOf(structuredClone(tree), `base-${name}`).problems).toEqual([]);
  });

  for (const [base, tree] of [
    ['ldap', LDAP],
    ['file', FILE],
  ] as const) {
    for (let seed = 1; seed <= 300; seed++) {
      it(`${base}, seed ${seed}`, () => {
        const next = random(seed);
        const mutated = structuredClone(tree);
        const mutations = Array.from({ length: 1 + Math.floor(next() * 3) }, (_, n) => mutate(mutated, next, n));
        const { file, problems } = problemsOf(mutated, `${base}-${seed}`);
        for (const p of problems) {
          expect(p.file === file || p.file.startsWith(SUPPORT), JSON.stringify(p)).toBe(true);
          expect(p.line, JSON.stringify(p)).toBeGreaterThan(0);
          expect(p.key, JSON.stringify(p)).not.toBe('');
        }
        // An unknown key, and null (valid nowhere in the schema), are always named.
        for (const m of mutations.filter((m) => m.kind === 'unknown' || (m.kind === 'wrong' && m.value === null))) {
          if (mutations.some((o) => o !== m && (m.key.startsWith(o.key) || o.key.startsWith(m.key)))) continue;
          expect(
            problems.some((p) => names(p, m.key)),
            `${m.key} in ${JSON.stringify(problems)}`,
          ).toBe(true);
        }
      });
    }
  }
});

describe('the crashes of issue 10, by name', () => {
  it('unknown keys in listen and at the top, beside admin: each key named, no TypeError', () => {
    const tree = { ...structuredClone(LDAP), cluster: {} } as Tree; // (`state` became a key: issue 15)
    (tree.listen as Tree).reusePort = true;
    const { problems } = problemsOf(tree, 'issue10-listen-admin');
    expect(problems.map((p) => `${p.key}: ${p.message}`).sort()).toEqual([
      'cluster: unknown key',
      'listen.reusePort: unknown key',
    ]);
  });

  it('services.<name>.auth is named with the values that service may take', () => {
    const tree = structuredClone(LDAP);
    (tree.services as Record<string, Tree>).owa!.auth = 'ntlm';
    (tree.services as Record<string, Tree>).mapi = { auth: 'forms' };
    const { problems } = problemsOf(tree, 'issue10-owa-forms');
    expect(problems.map((p) => `${p.key}: ${p.message}`).sort()).toEqual([
      'services.mapi.auth: must be one of "basic", "ntlm", "basic+ntlm"',
      'services.owa.auth: must be one of "forms", "basic"',
    ]);
  });

  it('file and environment problems are still reported beside a broken section', () => {
    const tree = structuredClone(LDAP);
    (tree.services as Record<string, Tree>).owa!.auth = 'ntlm';
    (tree.tls as Tree).cert = `${SUPPORT}/no-such.crt`;
    const { problems } = problemsOf(tree, 'issue10-beside');
    expect(problems.map((p) => p.key).sort()).toEqual(['services.owa.auth', 'tls.cert']);
  });
});
