// loadPolicy (src/policy/compile.ts): golden error fixtures and the compiled shape of a valid policy.
// Each test/fixtures/policies/<case>.yaml with a <case>.expected.txt must fail with exactly that
// ConfigError text (the fixtures folder written as `<dir>`). Everything is compiled against the file
// directory test/fixtures/policies/users.yaml (alice ∈ ExternalStaff ∈ AllowExternalAccess, bob, ceo).
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileDirectory } from '../../src/directory/file.js';
import { ConfigError } from '../../src/errors.js';
import { loadPolicy } from '../../src/policy/compile.js';
import { readPolicy } from '../../src/policy/structure.js';
import { SERVICES } from '../../src/pipeline/services.js';

const FIXTURES = resolve(dirname(fileURLToPath(import.meta.url)), '../fixtures/policies');
const DOMAIN = { netbios: 'LAB', upnSuffixes: ['lab.test'] };
const fixture = (name: string) => join(FIXTURES, name);

let directory: FileDirectory;
beforeAll(() => {
  directory = FileDirectory.load({
    type: 'file',
    path: fixture('users.yaml'),
    baseDn: 'DC=lab,DC=test',
    netbiosDomain: 'LAB',
    upnSuffixes: ['lab.test'],
  });
});

/** The ConfigError text of compiling `file`, with `dir` written as `<dir>`; fails if it compiles. */
async function errorText(file: string, dir = FIXTURES): Promise<string> {
  try {
    await loadPolicy(file, directory, DOMAIN);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.message.split(dir + '/').join('<dir>/');
  }
  throw new Error(`${file} compiled without error`);
}

const goldenCases = readdirSync(FIXTURES)
  .filter((f) => f.endsWith('.expected.txt'))
  .map((f) => f.slice(0, -'.expected.txt'.length))
  .sort();

describe('golden error fixtures (test/fixtures/policies/*.expected.txt)', () => {
  it('covers every case the brief asks for', () => {
    expect(goldenCases).toEqual(
      expect.arrayContaining([
        'unknown-group',
        'unknown-user',
        'duplicate-id',
        'allow-and-deny',
        'neither-allow-nor-deny',
        'unknown-service',
        'empty-services',
        'unknown-top-level-key',
        'schema-and-structure',
      ]),
    );
  });

  it.each(goldenCases)('%s', async (name) => {
    const expected = readFileSync(fixture(`${name}.expected.txt`), 'utf8').trimEnd();
    expect(await errorText(fixture(`${name}.yaml`))).toBe(expected);
  });
});

describe('problems are located by file, key and line', () => {
  it('an unknown group is named, with rules[i].allow.groups[j] and its line', async () => {
    const err = await loadPolicy(fixture('unknown-group.yaml'), directory, DOMAIN).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems).toEqual([
      {
        file: fixture('unknown-group.yaml'),
        key: 'rules[0].allow.groups[1]',
        line: 5,
        message: 'group AllowExternalAcess not found in the directory',
      },
    ]);
  });

  it('a missing policy file is a ConfigError naming it', async () => {
    expect(await errorText(fixture('no-such-policy.yaml'))).toBe('<dir>/no-such-policy.yaml: cannot read: ENOENT');
  });
});

describe('every problem at once (schema errors hide nothing)', () => {
  it('readPolicy finds the schema and structure problems without a directory, and every name to resolve', () => {
    const text = readPolicy(fixture('schema-and-structure.yaml'));
    expect(text.parsed).toBeNull();
    expect(text.problems.map((p) => `${p.line}: ${p.key}: ${p.message}`)).toEqual([
      '2: mode: must be one of "enforce", "report-only"',
      expect.stringMatching(/^5: rules\[0\]\.services\[1\]: must be one of/),
      '9: rules[1].allow.user: unknown key',
      '7: rules[1].id: duplicate rule id outlook',
      '10: rules[2]: a rule has exactly one of allow and deny',
    ]);
    expect(text.names.map((n) => `${n.kind} ${n.name} at ${n.path.join('.')}`)).toEqual([
      'group AllowExternalAcess at rules.0.allow.groups.0',
      'group AllowExternalAccess at rules.1.allow.groups.0',
      'group MobileUsers at rules.3.allow.groups.0',
      'user LAB\\mallory at rules.3.allow.users.0',
    ]);
  });

  it('a valid file parses with no problem', () => {
    const text = readPolicy(fixture('valid.yaml'));
    expect(text.problems).toEqual([]);
    expect(text.parsed?.rules.map((r) => r.id)).toEqual(['outlook', 'mobile', 'no-legacy-no-admin']);
  });

  it("rules that are not mappings, and a file that is not one, are the schema's to report, once", () => {
    const tmp = mkdtempSync(join(tmpdir(), 'exgate-policy-shape-'));
    try {
      writeFileSync(join(tmp, 'list.yaml'), '- id: a\n');
      expect(readPolicy(join(tmp, 'list.yaml')).problems.map((p) => p.message)).toHaveLength(1);
      writeFileSync(
        join(tmp, 'rules.yaml'),
        'rules:\n  - just-a-string\n  - id: ""\n    services: [owa]\n    deny: all\n  - id: ""\n    services: [owa]\n    deny: all\n',
      );
      const problems = readPolicy(join(tmp, 'rules.yaml')).problems.map((p) => `${p.key}: ${p.message}`);
      expect(problems.some((p) => p.includes('duplicate'))).toBe(false);
      expect(problems.some((p) => p.includes('exactly one'))).toBe(false);
      expect(problems[0]).toMatch(/^rules\[0\]: /);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('a name that does not resolve is reported at each place it stands, looked up once', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'exgate-policy-twice-'));
    try {
      writeFileSync(
        join(tmp, 'policy.yaml'),
        [
          'rules:',
          '  - id: a',
          '    services: [owa]',
          '    allow: { groups: [Nope] }',
          '  - id: b',
          '    services: [ews]',
          '    allow: { groups: [Nope, AllowExternalAccess] }',
          '',
        ].join('\n'),
      );
      let lookups = 0;
      const counting = Object.create(directory, {
        resolveGroup: {
          value: (name: string) => {
            lookups++;
            return directory.resolveGroup(name);
          },
        },
      }) as FileDirectory;
      const err = await loadPolicy(join(tmp, 'policy.yaml'), counting, DOMAIN).catch((e: unknown) => e);
      expect((err as ConfigError).problems.map((p) => `${p.line}: ${p.key}: ${p.message}`)).toEqual([
        '4: rules[0].allow.groups[0]: group Nope not found in the directory',
        '7: rules[1].allow.groups[0]: group Nope not found in the directory',
      ]);
      expect(lookups).toBe(2);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe('a valid policy', () => {
  it('compiles to per-service deny and allow lists of lowercase DNs', async () => {
    const policy = await loadPolicy(fixture('valid.yaml'), directory, DOMAIN);
    expect(policy.mode).toBe('enforce');
    expect(policy.file).toBe(fixture('valid.yaml'));
    expect([...policy.byService.keys()].sort()).toEqual([...SERVICES].sort());
    expect(policy.groupDns).toEqual([
      'cn=allowexternalaccess,cn=users,dc=lab,dc=test',
      'cn=mobileusers,cn=users,dc=lab,dc=test',
    ]);
    expect(policy.groupNames.get('cn=allowexternalaccess,cn=users,dc=lab,dc=test')).toBe('AllowExternalAccess');

    const mobile = policy.byService.get('activesync');
    expect(mobile?.deny).toEqual([]);
    expect(mobile?.allow.map((r) => r.id)).toEqual(['mobile']);
    expect([...(mobile?.allow[0]?.users ?? [])]).toEqual(['cn=chief executive,cn=users,dc=lab,dc=test']);
    expect(policy.byService.get('ecp')?.deny.map((r) => ({ id: r.id, everyone: r.everyone }))).toEqual([
      { id: 'no-legacy-no-admin', everyone: true },
    ]);
    expect(policy.byService.get('owa')).toEqual({ deny: [], allow: [] });
    expect(Object.isFrozen(policy)).toBe(true);
  });

  it('matches service names case-insensitively and groups by DN or name in any case', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'exgate-policy-case-'));
    try {
      writeFileSync(
        join(tmp, 'policy.yaml'),
        [
          'mode: report-only',
          'rules:',
          '  - id: outlook',
          '    services: [MAPI, Ews]',
          "    allow: { groups: ['cn=AllowExternalAccess,CN=Users,DC=lab,DC=test', externalstaff], users: [LAB\\alice, ALICE@LAB.TEST] }",
          '',
        ].join('\n'),
      );
      const policy = await loadPolicy(join(tmp, 'policy.yaml'), directory, DOMAIN);
      expect(policy.mode).toBe('report-only');
      const rule = policy.byService.get('ews')?.allow[0];
      expect(rule?.services).toEqual(['mapi', 'ews']);
      expect([...(rule?.groups ?? [])]).toEqual([
        'cn=allowexternalaccess,cn=users,dc=lab,dc=test',
        'cn=externalstaff,cn=users,dc=lab,dc=test',
      ]);
      expect([...(rule?.users ?? [])]).toEqual(['cn=alice anders,cn=users,dc=lab,dc=test']);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('an empty file is a valid policy that allows nothing', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'exgate-policy-empty-'));
    try {
      writeFileSync(join(tmp, 'policy.yaml'), '# nothing yet\n');
      const policy = await loadPolicy(join(tmp, 'policy.yaml'), directory, DOMAIN);
      expect(policy.mode).toBe('enforce');
      for (const s of SERVICES) expect(policy.byService.get(s)).toEqual({ deny: [], allow: [] });
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe('policy version', () => {
  let tmp: string;
  beforeAll(() => {
    tmp = mkdtempSync(join(tmpdir(), 'exgate-policy-version-'));
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('is stable for the same file and changes when the file changes', async () => {
    const file = join(tmp, 'policy.yaml');
    copyFileSync(fixture('valid.yaml'), file);
    const first = await loadPolicy(file, directory, DOMAIN);
    const again = await loadPolicy(file, directory, DOMAIN);
    const original = await loadPolicy(fixture('valid.yaml'), directory, DOMAIN);
    expect(first.version).toMatch(/^[0-9a-f]{16}$/);
    expect(again.version).toBe(first.version);
    expect(original.version).toBe(first.version); // content, not path

    writeFileSync(file, readFileSync(file, 'utf8').replace('users: [ceo]', 'users: [ceo, bob]'));
    const changed = await loadPolicy(file, directory, DOMAIN);
    expect(changed.version).not.toBe(first.version);

    writeFileSync(file, readFileSync(file, 'utf8').replace('mode: enforce', 'mode: report-only'));
    const reportOnly = await loadPolicy(file, directory, DOMAIN);
    expect(reportOnly.version).not.toBe(changed.version);
    expect(reportOnly.mode).toBe('report-only');
  });
});
