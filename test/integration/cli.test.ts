/**
 * The command line as an admin runs it: `exgate check` against the real DC, the demo config,
 * broken files, and the gateway over LDAPS and StartTLS.
 */
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { USERS } from '../helpers/ad-fixtures.js';
import { send, startHarness, TEST_POLICY, type Harness } from '../helpers/gateway-harness.js';

const run = promisify(execFile);
const EXGATE = join(import.meta.dirname, '..', '..', 'bin', 'exgate.js');

async function exgate(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [EXGATE, ...args], { timeout: 30_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('exgate check', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ directory: 'ldap' });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('prints ok for a good config whose groups all exist in AD', async () => {
    expect(await exgate('check', '--config', h.configFile)).toMatchObject({ code: 0, stdout: 'ok\n' });
  });

  it('prints ok for the shipped demo config', async () => {
    expect(await exgate('check', '--config', join(import.meta.dirname, '..', '..', 'config', 'demo.yaml'))).toMatchObject({ code: 0, stdout: 'ok\n' });
  });

  it('names a group that does not exist, with file, line and key, and exits 1', async () => {
    writeFileSync(join(h.dir, 'policy.yaml'), TEST_POLICY.replace('groups: [AllowExternalAccess]', 'groups: [AllowExternalAcess]'));
    try {
      const r = await exgate('check', '--config', h.configFile);
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(/policy\.yaml:\d+: rules\[1\]\.allow\.groups\[0\]: group AllowExternalAcess not found in the directory/);
    } finally {
      writeFileSync(join(h.dir, 'policy.yaml'), TEST_POLICY);
    }
  });

  it('reports every config problem at once', async () => {
    const bad = join(h.dir, 'bad.yaml');
    writeFileSync(bad, 'listen: { port: 99999, hots: x }\nnames: { external: [] }\npolicyFile: nope.yaml\n');
    const r = await exgate('check', '--config', bad);
    expect(r.code).toBe(1);
    const lines = r.stdout.trim().split('\n');
    expect(lines.length).toBeGreaterThanOrEqual(5);
    expect(r.stdout).toContain('listen.hots: unknown key');
    expect(r.stdout).toContain('listen.port:');
    expect(r.stdout).toContain('names.external: needs at least one name');
    expect(r.stdout).toContain('tls: is required');
    expect(r.stdout).not.toContain('Adm1n');
  });

  it('reports an unreachable directory without a secret in the message', async () => {
    const conf = join(h.dir, 'dead-dc.yaml');
    const { readFileSync } = await import('node:fs');
    writeFileSync(conf, readFileSync(h.configFile, 'utf8').replace(/url: ldap:\/\/127\.0\.0\.1:389/, 'url: ldap://127.0.0.1:1'));
    const r = await exgate('check', '--config', conf);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/directory.*(ECONNREFUSED|failed)/);
    expect(r.stdout + r.stderr).not.toContain('Svc-Exg4te');
  });

  it('serve refuses a broken config with the problems and exit 1', async () => {
    const bad = join(h.dir, 'bad2.yaml');
    writeFileSync(bad, 'listen: { port: 0 }\n');
    const r = await exgate('serve', '--config', bad);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/bad2\.yaml:1: tls: is required/);
  });

  it('answers an unknown command with usage and exit 2', async () => {
    const r = await exgate('frobnicate');
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('usage: exgate');
  });
});

describe.each(['ldaps', 'starttls'] as const)('the gateway over %s', (kind) => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ directory: kind });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('allows alice and refuses bob', async () => {
    expect((await send(h, '/owa/', { user: 'alice', password: USERS.alice.password })).status).toBe(200);
    expect((await send(h, '/owa/', { user: 'bob', password: USERS.bob.password })).status).toBe(403);
    expect((await send(h, '/owa/', { user: 'carol', password: 'wrong' })).status).toBe(401);
  });
});
