/**
 * A throwaway Samba AD domain controller for integration tests (domain LAB.TEST, see ad-fixtures.ts).
 *
 * Recipe (verified on Debian 12 / Samba 4.17, see /work/shared/research/samba.md section 8):
 * 1. Once per machine, provision a template domain into `$TMPDIR/exgate-samba-template-v1` (about 5 s):
 *    `samba-tool domain provision` with every runtime directory moved inside the template, the
 *    `ldap server require strong auth = no` line added by hand (provision drops it), and our own EC P-256
 *    CA + server certificate in private/tls/{ca,cert,key}.pem so Samba does not generate an RSA-4096 key
 *    and clients can verify `ldaps://127.0.0.1` with the CA alone. The template is built in a temp dir
 *    and renamed into place, so a crash never leaves a half-written template behind.
 * 2. Per run: copy the template to a fresh mkdtemp dir and rewrite the paths in etc/smb.conf (about 20 ms).
 * 3. `samba -i` with stdin a pipe: Samba exits when its stdin hits EOF, so it dies with this process.
 * 4. Poll the rootDSE until LDAP answers (and fail fast if Samba exits), then create the fixtures over
 *    plain LDAP as Administrator (simple bind works because strong auth is off).
 *
 * Limits: needs root (provisioning chowns files; ports 389/636 are privileged). Samba has no LDAP port
 * option, so only one instance per host (network namespace) can run; startSamba fails clearly if port 389
 * is taken.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { Attribute, Change, Client, escapeFilter, type Entry } from 'ldapts';
import {
  ADMIN,
  DOMAIN,
  GLOBAL_SECURITY_GROUP_TYPE,
  GROUPS,
  SERVICE_ACCOUNT,
  UAC,
  USERS,
  groupDn,
  PAST_ACCOUNT_EXPIRES,
  type GroupName,
  type TestUser,
} from './ad-fixtures.js';

const execFileAsync = promisify(execFile);

export const LDAP_URL = 'ldap://127.0.0.1:389';
export const LDAPS_URL = 'ldaps://127.0.0.1:636';
/** Every port Samba's LDAP service binds (on 127.0.0.1 and ::1). */
const SAMBA_PORTS = [389, 636, 3268, 3269] as const;

/** Bump the suffix whenever provisioning or the certificate recipe changes, so old templates are ignored. */
export const DEFAULT_TEMPLATE_DIR = join(tmpdir(), 'exgate-samba-template-v1');
/** Written last into a finished template; a template dir without it is incomplete and gets rebuilt. */
const TEMPLATE_MARKER = '.exgate-template-complete';
/** Prefix of per-run directories (in tmpdir). */
const RUN_DIR_PREFIX = 'exgate-samba-run-';
/** File in a run dir holding the pid of the Node process that owns it (for sweeping stale dirs). */
const OWNER_FILE = 'exgate-owner.pid';

export interface StartSambaOptions {
  /** Where the provisioned template lives. Default: env EXGATE_SAMBA_TEMPLATE or DEFAULT_TEMPLATE_DIR. */
  templateDir?: string;
  /** Max time for LDAP to answer after spawning Samba. Default 30 000 ms. */
  readyTimeoutMs?: number;
  /** Create the users and groups from ad-fixtures.ts. Default true. */
  fixtures?: boolean;
  /** Progress messages (template creation etc.). Default: silent. */
  log?: (message: string) => void;
}

/** Milliseconds spent in each phase of startSamba. */
export interface SambaTimings {
  /** Whether this call had to provision the template (otherwise it was reused). */
  templateCreated: boolean;
  template: number;
  copy: number;
  /** Spawn until LDAP answers. */
  start: number;
  fixtures: number;
  total: number;
}

/** Directory administration over LDAP as Administrator. Works from any process that can reach the DC. */
export interface SambaAdmin {
  /** Runs `fn` with a client bound as Administrator, then unbinds. */
  withAdmin<T>(fn: (client: Client) => Promise<T>): Promise<T>;
  /** DN of the account with this sAMAccountName (users, groups, computers); throws if not found. */
  findDn(sam: string): Promise<string>;
  /** Adds `memberDn` to the group's `member` attribute. `group` is the group's sAMAccountName. */
  addMember(group: GroupName | string, memberDn: string): Promise<void>;
  removeMember(group: GroupName | string, memberDn: string): Promise<void>;
  /** Sets or clears ACCOUNTDISABLE in the user's userAccountControl. */
  setDisabled(sam: string, disabled: boolean): Promise<void>;
  /** Administrative password reset (replaces unicodePwd; also clears "must change at next logon"). */
  setPassword(sam: string, password: string): Promise<void>;
  /**
   * Runs `samba-tool <args> -H ldap://127.0.0.1 -U LAB\Administrator%…`, e.g.
   * `run(['user', 'unlock', 'grace'])`. Resolves with the output; rejects with stderr on failure.
   */
  run(args: readonly string[]): Promise<{ stdout: string; stderr: string }>;
}

export interface SambaHandle extends SambaAdmin {
  readonly ldapUrl: string;
  readonly ldapsUrl: string;
  /** PEM of the test CA that issued the DC's certificate (SAN 127.0.0.1, ::1, localhost, dc1.lab.test). */
  readonly caPem: string;
  /** Path of that PEM file (inside `dir`, so only valid until stop()). */
  readonly caFile: string;
  /** The per-run Samba directory (etc/smb.conf, private/, log/samba.out ...). */
  readonly dir: string;
  /** Pid of the current samba master process (changes after startServer()); undefined while stopped. */
  readonly pid: number | undefined;
  /** True while the samba process is running. */
  readonly running: boolean;
  readonly timings: SambaTimings;
  /** Stops the samba process but keeps `dir` (simulates "DC down"). Resolves when port 389 is free. */
  stopServer(): Promise<void>;
  /** Starts samba again on the same dir (same data) and resolves when LDAP answers. */
  startServer(): Promise<void>;
  /** Stops samba (if running) and deletes `dir`. Idempotent. */
  stop(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------------

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Absolute path of an executable, searching PATH plus the sbin dirs (often missing for non-root users). */
export function findExecutable(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const d of dirs) {
    if (!d) continue;
    const p = join(d, name);
    if (existsSync(p)) return p;
  }
  return undefined;
}

function requireExecutable(name: string): string {
  const p = findExecutable(name);
  if (!p) {
    throw new Error(
      `"${name}" not found. Install Samba AD DC: apt-get install -y --no-install-recommends samba-ad-dc ` +
        'samba-ad-provision (or run `node scripts/ensure-test-deps.mjs` as root).',
    );
  }
  return p;
}

/** Last `lines` lines of a text file, or '' if unreadable. */
function tail(file: string, lines = 25): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

function errorText(err: unknown): string {
  if (err && typeof err === 'object') {
    const e = err as { message?: unknown; stdout?: unknown; stderr?: unknown };
    const parts = [String(e.message ?? err)];
    for (const key of ['stdout', 'stderr'] as const) {
      const v = e[key];
      if (typeof v === 'string' && v.trim()) parts.push(`${key}:\n${v.trim().split('\n').slice(-25).join('\n')}`);
    }
    return parts.join('\n');
  }
  return String(err);
}

/** Rejects with a clear message if something already listens on host:port. */
function assertPortFree(port: number, host = '127.0.0.1'): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const server = createServer();
    server.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE') {
        reject(
          new Error(
            `Port ${port} on ${host} is already in use, so Samba cannot start its LDAP server there. ` +
              `Another Samba/LDAP server (maybe a leftover test run) is listening; find it with ` +
              `\`ss -ltnp 'sport = :${port}'\` and stop it.`,
          ),
        );
      } else if (err.code === 'EACCES') {
        reject(new Error(`Not allowed to bind port ${port} on ${host}: the Samba tests must run as root.`));
      } else {
        reject(err);
      }
    });
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolvePromise()));
  });
}

/** Checks all Samba ports; with `waitMs` > 0 retries until they are free or the time is up. */
async function assertPortsFree(waitMs = 0): Promise<void> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      for (const port of SAMBA_PORTS) await assertPortFree(port);
      return;
    } catch (err) {
      if (Date.now() >= deadline) throw err;
      await sleep(50);
    }
  }
}

/** True if a process with this pid exists. */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes run dirs left behind by test processes that died without calling stop(). */
function sweepStaleRunDirs(parent: string, log: (m: string) => void): void {
  let names: string[];
  try {
    names = readdirSync(parent).filter((n) => n.startsWith(RUN_DIR_PREFIX));
  } catch {
    return;
  }
  for (const name of names) {
    const dir = join(parent, name);
    let owner = NaN;
    try {
      owner = Number(readFileSync(join(dir, OWNER_FILE), 'utf8').trim());
    } catch {
      // No owner file: either being copied right now by someone else, or broken. Leave it alone.
      continue;
    }
    if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && !processAlive(owner)) {
      log(`removing stale run dir ${dir} (owner pid ${owner} is gone)`);
      rmSync(dir, { recursive: true, force: true });
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Template
// ---------------------------------------------------------------------------------------------------

/**
 * smb.conf [global] settings the tests rely on. They are written into the provisioned smb.conf by
 * `forceGlobalSettings` because `samba-tool domain provision` does not reliably keep `--option` values:
 * it dropped "ldap server require strong auth" (and, with `-s /dev/null`, the runtime directories).
 */
function runtimeSettings(dir: string): Record<string, string> {
  return {
    // Allow simple binds on plain ldap://:389 (default "yes" answers them with resultCode 8,
    // strongAuthRequired). Also lets unicodePwd be written without TLS.
    'ldap server require strong auth': 'no',
    // Samba accepts the previous password for 60 minutes after a change or reset by default (NTLM
    // "old password allowed period", which also applies to LDAP simple binds). Tests that reset a
    // password expect the old one to stop working at once.
    'old password allowed period': '0',
    // Loopback only, LDAP service only (ports 389/636/3268/3269; ~15 processes instead of ~60).
    interfaces: 'lo',
    'bind interfaces only': 'yes',
    'server services': 'ldap',
    // Keep every runtime path inside the domain dir (the defaults point into /run/samba and /var).
    'pid directory': `${dir}/run`,
    'ncalrpc dir': `${dir}/run/ncalrpc`,
    'winbindd socket directory': `${dir}/run/winbindd`,
    'ntp signd socket directory': `${dir}/run/ntp_signd`,
    'log file': `${dir}/log/log.%m`,
  };
}

/** Replaces/adds `settings` in the [global] section of an smb.conf text. */
function forceGlobalSettings(text: string, settings: Record<string, string>): string {
  const norm = (key: string): string => key.toLowerCase().replace(/\s+/g, '');
  const keys = new Set(Object.keys(settings).map(norm));
  const out: string[] = [];
  let section = '';
  let sawGlobal = false;
  for (const line of text.split('\n')) {
    const header = /^\s*\[([^\]]+)\]\s*$/.exec(line);
    if (header) {
      section = (header[1] ?? '').toLowerCase();
      out.push(line);
      if (section === 'global') {
        sawGlobal = true;
        for (const [k, v] of Object.entries(settings)) out.push(`\t${k} = ${v}`);
      }
      continue;
    }
    const key = /^\s*([^=;#]+?)\s*=/.exec(line)?.[1];
    if (section === 'global' && key !== undefined && keys.has(norm(key))) continue; // replaced above
    out.push(line);
  }
  if (!sawGlobal) throw new Error('unexpected smb.conf from provision: no [global] section');
  return out.join('\n');
}

/** Provisions a fresh domain into `dir` (an existing empty directory). */
async function provision(dir: string): Promise<void> {
  for (const sub of ['run', 'log', 'cache']) mkdirSync(join(dir, sub), { recursive: true });
  const settings = runtimeSettings(dir);
  const args = [
    'domain',
    'provision',
    // Start from built-in defaults, not from /etc/samba/smb.conf: otherwise provision copies that file's
    // settings (Debian's: "logging = file", [homes], [printers], passwd program ...) into our config.
    '-s',
    '/dev/null',
    `--targetdir=${dir}`,
    `--realm=${DOMAIN.realm}`,
    `--domain=${DOMAIN.netbios}`,
    '--server-role=dc',
    '--dns-backend=NONE',
    `--adminpass=${ADMIN.password}`,
    `--host-name=${DOMAIN.dcHostName}`,
    ...Object.entries(settings).map(([k, v]) => `--option=${k} = ${v}`),
  ];
  try {
    await execFileAsync(requireExecutable('samba-tool'), args, { cwd: dir, maxBuffer: 64 * 1024 * 1024 });
  } catch (err) {
    throw new Error(`samba-tool domain provision failed:\n${errorText(err)}`);
  }
  const conf = join(dir, 'etc', 'smb.conf');
  writeFileSync(conf, forceGlobalSettings(readFileSync(conf, 'utf8'), settings));
  await writeTlsCertificates(join(dir, 'private', 'tls'));
}

/**
 * Writes an EC P-256 CA and a server certificate for 127.0.0.1/::1/localhost/dc1.lab.test into Samba's
 * default TLS location (tls/{ca,cert,key}.pem under the private dir). Samba uses files that exist there
 * instead of generating its own RSA-4096 self-signed key (which has no SAN and costs 1-3 s at first start).
 */
async function writeTlsCertificates(tlsDir: string): Promise<void> {
  mkdirSync(tlsDir, { recursive: true });
  const openssl = requireExecutable('openssl');
  const run = async (...args: string[]): Promise<void> => {
    try {
      await execFileAsync(openssl, args, { cwd: tlsDir });
    } catch (err) {
      throw new Error(`openssl ${args[0]} failed:\n${errorText(err)}`);
    }
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  await run(
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'ca.key',
    '-out',
    'ca.pem',
    '-days',
    '3650',
    '-subj',
    '/CN=exgate test CA (LAB.TEST)',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  );
  await run('req', ...ec, '-keyout', 'key.pem', '-out', 'server.csr', '-subj', `/CN=${DOMAIN.dcFqdn}`);
  writeFileSync(
    join(tlsDir, 'server.ext'),
    [
      `subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost,DNS:${DOMAIN.dcFqdn}`,
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature,keyEncipherment',
      'extendedKeyUsage=serverAuth',
      '',
    ].join('\n'),
  );
  await run(
    'x509',
    '-req',
    '-in',
    'server.csr',
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-out',
    'cert.pem',
    '-days',
    '3650',
    '-extfile',
    'server.ext',
  );
  // The CA key is not needed any more; Samba refuses a key.pem that is readable by others.
  for (const f of ['ca.key', 'ca.srl', 'server.csr', 'server.ext']) rmSync(join(tlsDir, f), { force: true });
  chmodSync(join(tlsDir, 'key.pem'), 0o600);
}

/** Contents of TEMPLATE_MARKER. */
interface TemplateMarker {
  /** The template path written into its smb.conf (per-run copies replace exactly this string). */
  path: string;
  created: string;
}

/**
 * Makes sure a complete template exists at `templateDir`. Builds it in a sibling temp dir and renames it
 * into place, so concurrent or interrupted runs never see a half-written template.
 * @returns true if this call created it.
 */
async function ensureTemplate(templateDir: string, log: (m: string) => void): Promise<boolean> {
  if (existsSync(join(templateDir, TEMPLATE_MARKER))) return false;
  if (existsSync(templateDir)) {
    log(`removing incomplete template ${templateDir}`);
    rmSync(templateDir, { recursive: true, force: true });
  }
  const work = mkdtempSync(`${templateDir}.tmp-`);
  try {
    log(`provisioning Samba AD template into ${templateDir} (one-time, about 5 s)`);
    await provision(work);
    // Point the config at the final location; per-run copies replace this path again.
    const conf = join(work, 'etc', 'smb.conf');
    writeFileSync(conf, readFileSync(conf, 'utf8').replaceAll(work, templateDir));
    const marker: TemplateMarker = { path: templateDir, created: new Date().toISOString() };
    writeFileSync(join(work, TEMPLATE_MARKER), `${JSON.stringify(marker)}\n`);
    try {
      renameSync(work, templateDir);
    } catch (err) {
      // Lost a race with a concurrent run that finished first: use theirs.
      if (existsSync(join(templateDir, TEMPLATE_MARKER))) return false;
      throw err;
    }
    return true;
  } finally {
    rmSync(work, { recursive: true, force: true }); // no-op after a successful rename
  }
}

// ---------------------------------------------------------------------------------------------------
// LDAP helpers
// ---------------------------------------------------------------------------------------------------

function firstString(entry: Entry, attr: string): string | undefined {
  const v = entry[attr];
  const first = Array.isArray(v) ? v[0] : v;
  return first === undefined ? undefined : first.toString();
}

/** AD wants unicodePwd as the UTF-16LE encoding of the password in double quotes. */
function unicodePwd(password: string): Buffer {
  return Buffer.from(`"${password}"`, 'utf16le');
}

/** Resolves when the rootDSE of our domain answers; rejects early if `exited()` becomes true. */
async function waitForLdap(
  url: string,
  timeoutMs: number,
  exited: () => string | undefined,
  exitPromise: Promise<unknown>,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  for (;;) {
    const why = exited();
    if (why) throw new Error(`samba ${why} before LDAP answered`);
    const client = new Client({ url, connectTimeout: 1000, timeout: 2000 });
    try {
      const { searchEntries } = await client.search('', {
        scope: 'base',
        filter: '(objectClass=*)',
        attributes: ['defaultNamingContext'],
      });
      const nc = searchEntries[0] ? firstString(searchEntries[0], 'defaultNamingContext') : undefined;
      if (nc?.toLowerCase() !== DOMAIN.baseDn.toLowerCase()) {
        throw new Error(
          `an LDAP server on ${url} answers, but its defaultNamingContext is ${nc}, not ${DOMAIN.baseDn}`,
        );
      }
      return;
    } catch (err) {
      if (err instanceof Error && err.message.startsWith('an LDAP server')) throw err;
      lastError = err instanceof Error ? err.message : String(err);
    } finally {
      await client.unbind().catch(() => undefined);
    }
    if (Date.now() >= deadline) {
      throw new Error(`Samba LDAP did not answer on ${url} within ${timeoutMs} ms (last error: ${lastError})`);
    }
    await Promise.race([sleep(50), exitPromise]);
  }
}

/** LDAP-only administration helpers; usable from test workers (they only need the URL). */
export function sambaAdmin(ldapUrl: string = LDAP_URL): SambaAdmin {
  const withAdmin = async <T>(fn: (client: Client) => Promise<T>): Promise<T> => {
    const client = new Client({ url: ldapUrl, connectTimeout: 5000, timeout: 10_000 });
    try {
      await client.bind(ADMIN.upn, ADMIN.password);
      return await fn(client);
    } finally {
      await client.unbind().catch(() => undefined);
    }
  };

  const findDnWith = async (client: Client, sam: string): Promise<Entry> => {
    const { searchEntries } = await client.search(DOMAIN.baseDn, {
      scope: 'sub',
      filter: escapeFilter`(sAMAccountName=${sam})`,
      attributes: ['userAccountControl'],
    });
    const entry = searchEntries[0];
    if (!entry) throw new Error(`no account with sAMAccountName "${sam}" in ${DOMAIN.baseDn}`);
    return entry;
  };

  const modifyMember = (operation: 'add' | 'delete', group: string, memberDn: string): Promise<void> =>
    withAdmin(async (c) => {
      const dn = (await findDnWith(c, group)).dn;
      await c.modify(
        dn,
        new Change({ operation, modification: new Attribute({ type: 'member', values: [memberDn] }) }),
      );
    });

  return {
    withAdmin,
    findDn: (sam) => withAdmin(async (c) => (await findDnWith(c, sam)).dn),
    addMember: (group, memberDn) => modifyMember('add', group, memberDn),
    removeMember: (group, memberDn) => modifyMember('delete', group, memberDn),
    setDisabled: (sam, disabled) =>
      withAdmin(async (c) => {
        const entry = await findDnWith(c, sam);
        const uac = Number(firstString(entry, 'userAccountControl') ?? UAC.NORMAL_ACCOUNT);
        const next = disabled ? uac | UAC.ACCOUNTDISABLE : uac & ~UAC.ACCOUNTDISABLE;
        if (next === uac) return;
        await c.modify(
          entry.dn,
          new Change({
            operation: 'replace',
            modification: new Attribute({ type: 'userAccountControl', values: [String(next)] }),
          }),
        );
      }),
    setPassword: (sam, password) =>
      withAdmin(async (c) => {
        const entry = await findDnWith(c, sam);
        await c.modify(
          entry.dn,
          new Change({
            operation: 'replace',
            modification: new Attribute({ type: 'unicodePwd', values: [unicodePwd(password)] }),
          }),
        );
      }),
    run: (args) => runSambaTool(args),
  };
}

/** samba-tool against the local DC over LDAP as LAB\Administrator. */
async function runSambaTool(args: readonly string[]): Promise<{ stdout: string; stderr: string }> {
  const full = [
    ...args,
    '-H',
    'ldap://127.0.0.1',
    // The LAB\ prefix is required: with a bare "Administrator" samba-tool takes the workgroup from
    // /etc/samba/smb.conf and the NTLM bind fails (data 51f). `-s /dev/null` makes the run independent of
    // whatever /etc/samba/smb.conf contains (or whether it exists).
    '-s',
    '/dev/null',
    '-U',
    `${ADMIN.downLevel}%${ADMIN.password}`,
  ];
  try {
    const { stdout, stderr } = await execFileAsync(requireExecutable('samba-tool'), full, {
      maxBuffer: 16 * 1024 * 1024,
    });
    return { stdout, stderr };
  } catch (err) {
    throw new Error(`samba-tool ${args.join(' ')} failed:\n${errorText(err)}`);
  }
}

/** Creates the service account, the users and the groups of ad-fixtures.ts. */
async function createFixtures(admin: SambaAdmin): Promise<void> {
  await admin.withAdmin(async (c) => {
    const addUser = (u: {
      dn: string;
      sam: string;
      upn: string;
      mail: string;
      password: string;
      uac: number;
      givenName?: string;
      sn?: string;
      displayName: string;
      extra?: Record<string, string>;
    }): Promise<void> => {
      const attrs: Attribute[] = [
        new Attribute({ type: 'objectClass', values: ['top', 'person', 'organizationalPerson', 'user'] }),
        new Attribute({ type: 'sAMAccountName', values: [u.sam] }),
        new Attribute({ type: 'userPrincipalName', values: [u.upn] }),
        new Attribute({ type: 'displayName', values: [u.displayName] }),
        new Attribute({ type: 'mail', values: [u.mail] }),
        new Attribute({ type: 'unicodePwd', values: [unicodePwd(u.password)] }),
        new Attribute({ type: 'userAccountControl', values: [String(u.uac)] }),
      ];
      if (u.givenName) attrs.push(new Attribute({ type: 'givenName', values: [u.givenName] }));
      if (u.sn) attrs.push(new Attribute({ type: 'sn', values: [u.sn] }));
      for (const [type, value] of Object.entries(u.extra ?? {})) attrs.push(new Attribute({ type, values: [value] }));
      return c.add(u.dn, attrs);
    };

    const users: TestUser[] = Object.values(USERS);
    await Promise.all([
      addUser({
        dn: SERVICE_ACCOUNT.dn,
        sam: SERVICE_ACCOUNT.sam,
        upn: SERVICE_ACCOUNT.upn,
        mail: SERVICE_ACCOUNT.mail,
        password: SERVICE_ACCOUNT.password,
        uac: SERVICE_ACCOUNT.userAccountControl,
        displayName: SERVICE_ACCOUNT.cn,
      }),
      ...users.map((u) => {
        const extra: Record<string, string> = {};
        if (u.state === 'mustChangePassword') extra.pwdLastSet = '0';
        if (u.state === 'expired') extra.accountExpires = PAST_ACCOUNT_EXPIRES;
        const uac = UAC.NORMAL_ACCOUNT | (u.state === 'disabled' ? UAC.ACCOUNTDISABLE : 0);
        return addUser({
          dn: u.dn,
          sam: u.sam,
          upn: u.upn,
          mail: u.mail,
          password: u.password,
          uac,
          givenName: u.givenName,
          sn: u.sn,
          displayName: u.cn,
          extra,
        });
      }),
    ]);

    // Groups with their direct members, inner groups first so nested group DNs exist when referenced.
    const groupNames = Object.keys(GROUPS) as GroupName[];
    const depth = (g: GroupName): number => Math.max(0, ...GROUPS[g].memberOf.map((p) => depth(p) + 1));
    groupNames.sort((a, b) => depth(b) - depth(a));
    for (const name of groupNames) {
      const members = [
        ...users.filter((u) => u.groups.includes(name)).map((u) => u.dn),
        ...groupNames.filter((g) => GROUPS[g].memberOf.includes(name)).map(groupDn),
      ];
      const attrs = [
        new Attribute({ type: 'objectClass', values: ['top', 'group'] }),
        new Attribute({ type: 'sAMAccountName', values: [name] }),
        new Attribute({ type: 'groupType', values: [String(GLOBAL_SECURITY_GROUP_TYPE)] }),
        new Attribute({ type: 'description', values: [GROUPS[name].description] }),
      ];
      if (members.length) attrs.push(new Attribute({ type: 'member', values: members }));
      await c.add(GROUPS[name].dn, attrs);
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// startSamba
// ---------------------------------------------------------------------------------------------------

/**
 * Starts a fresh Samba AD DC for LAB.TEST on 127.0.0.1:389/636 with the fixtures of ad-fixtures.ts.
 * Call `stop()` on the result when done (the process also dies with this Node process).
 */
export async function startSamba(opts: StartSambaOptions = {}): Promise<SambaHandle> {
  const t0 = performance.now();
  const log = opts.log ?? ((): void => undefined);
  const readyTimeoutMs = opts.readyTimeoutMs ?? 30_000;
  const templateDir = resolve(opts.templateDir ?? process.env.EXGATE_SAMBA_TEMPLATE ?? DEFAULT_TEMPLATE_DIR);

  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new Error('The Samba AD tests must run as root (provisioning chowns files; ports 389/636 are privileged).');
  }
  const sambaBin = requireExecutable('samba');
  // Fail before the slow parts if another DC already holds the ports.
  await assertPortsFree();

  const templateCreated = await ensureTemplate(templateDir, log);
  const t1 = performance.now();

  const parent = resolve(tmpdir());
  sweepStaleRunDirs(parent, log);
  const dir = mkdtempSync(join(parent, RUN_DIR_PREFIX));
  writeFileSync(join(dir, OWNER_FILE), `${process.pid}\n`);
  let child: ChildProcess | undefined;
  let exitInfo: string | undefined;
  let exitPromise: Promise<void> = Promise.resolve();
  const conf = join(dir, 'etc', 'smb.conf');
  const outFile = join(dir, 'log', 'samba.out');
  const caFile = join(dir, 'private', 'tls', 'ca.pem');

  /** Spawns samba on `dir` and waits until LDAP answers. */
  const spawnServer = async (): Promise<void> => {
    exitInfo = undefined;
    const out = openSync(outFile, 'a');
    let proc: ChildProcess;
    try {
      // -i: stay in the foreground, log to stdout, and exit when stdin reaches EOF (i.e. when we die).
      proc = spawn(sambaBin, ['-s', conf, '-i', '-d1'], { stdio: ['pipe', out, out] });
    } finally {
      closeSync(out);
    }
    child = proc;
    proc.stdin?.on('error', () => undefined); // EPIPE if samba is already gone
    exitPromise = new Promise<void>((done) => {
      const onGone = (why: string): void => {
        if (child === proc) exitInfo = why;
        done();
      };
      proc.once('exit', (code, signal) => onGone(`exited (${signal ? `signal ${signal}` : `code ${code}`})`));
      proc.once('error', (err) => onGone(`failed to start (${err.message})`));
    });
    // Do not keep the Node event loop alive just for samba (it exits with us anyway).
    proc.unref();
    (proc.stdin as unknown as { unref?: () => void } | null)?.unref?.();
    try {
      await waitForLdap(LDAP_URL, readyTimeoutMs, () => exitInfo, exitPromise);
    } catch (err) {
      await killServer();
      const msg = err instanceof Error ? err.message : String(err);
      throw new Error(
        `${msg}\n--- last lines of samba's output (log/samba.out) ---\n${tail(outFile)}\n---\n` +
          `(If the template is stale, e.g. after a Samba upgrade, delete ${templateDir} to rebuild it.)`,
      );
    }
  };

  /** SIGTERM, SIGKILL after 10 s; resolves when the master process has exited. */
  const killServer = async (): Promise<void> => {
    const proc = child;
    if (!proc || exitInfo !== undefined) return;
    let timer: NodeJS.Timeout | undefined;
    proc.kill('SIGTERM');
    const killed = await Promise.race([
      exitPromise.then(() => false),
      new Promise<boolean>((r) => {
        timer = setTimeout(() => r(true), 10_000);
      }),
    ]);
    clearTimeout(timer); // an uncleared 10 s timer keeps vitest alive after the run
    if (killed) {
      proc.kill('SIGKILL');
      await exitPromise;
    }
  };

  let copyMs = 0;
  let startMs = 0;
  let fixturesMs = 0;
  try {
    // Use the path recorded at provisioning time (templateDir may be spelled differently, e.g. via a
    // symlink), and check the result: a copy whose smb.conf still pointed into the template would make
    // Samba write into the template.
    const marker = JSON.parse(readFileSync(join(templateDir, TEMPLATE_MARKER), 'utf8')) as TemplateMarker;
    cpSync(realpathSync(templateDir), dir, { recursive: true });
    rmSync(join(dir, TEMPLATE_MARKER), { force: true });
    const text = readFileSync(conf, 'utf8').replaceAll(marker.path, dir);
    if (!text.includes(`private dir = ${join(dir, 'private')}\n`)) {
      throw new Error(`could not relocate ${conf} from template ${marker.path}; delete ${templateDir} to rebuild it`);
    }
    writeFileSync(conf, text);
    const t2 = performance.now();
    copyMs = t2 - t1;

    await spawnServer();
    const t3 = performance.now();
    startMs = t3 - t2;

    if (opts.fixtures ?? true) {
      try {
        await createFixtures(sambaAdmin(LDAP_URL));
      } catch (err) {
        throw new Error(`creating the AD fixtures failed: ${errorText(err)}`);
      }
    }
    fixturesMs = performance.now() - t3;
  } catch (err) {
    await killServer().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  const caPem = readFileSync(caFile, 'utf8');
  const admin = sambaAdmin(LDAP_URL);
  let stopped = false;

  const handle: SambaHandle = {
    ...admin,
    ldapUrl: LDAP_URL,
    ldapsUrl: LDAPS_URL,
    caPem,
    caFile,
    dir,
    get pid() {
      return exitInfo === undefined ? child?.pid : undefined;
    },
    get running() {
      return child !== undefined && exitInfo === undefined;
    },
    timings: {
      templateCreated,
      template: Math.round(t1 - t0),
      copy: Math.round(copyMs),
      start: Math.round(startMs),
      fixtures: Math.round(fixturesMs),
      total: Math.round(performance.now() - t0),
    },
    async stopServer() {
      await killServer();
      // Prefork workers can outlive the master for a moment; "DC down" should mean "port closed".
      await assertPortsFree(5000);
    },
    async startServer() {
      if (stopped) throw new Error(`startServer: ${dir} was already removed by stop()`);
      if (handle.running) return;
      await assertPortsFree(5000);
      await spawnServer();
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await killServer();
      // Prefork children may still be writing for a moment after the master: let them go, then remove.
      await assertPortsFree(5000).catch(() => {});
      rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    },
  };
  return handle;
}

// ---------------------------------------------------------------------------------------------------
// Remote control (for test workers)
// ---------------------------------------------------------------------------------------------------

/** Actions the global setup's control endpoint accepts (see test/global-setup.ts). */
export type SambaControlAction = 'stop-server' | 'start-server';

/**
 * Client for the control endpoint that test/global-setup.ts serves on 127.0.0.1: lets a test worker stop
 * and restart the shared DC (`inject('sambaControlUrl')`). Tests that do this must not run in parallel
 * with other tests that need the DC.
 */
export function sambaControl(controlUrl: string): { stopServer(): Promise<void>; startServer(): Promise<void> } {
  const call = async (action: SambaControlAction): Promise<void> => {
    const res = await fetch(new URL(action, controlUrl.endsWith('/') ? controlUrl : `${controlUrl}/`), {
      method: 'POST',
    });
    const body = await res.text();
    if (!res.ok) throw new Error(`samba control ${action} failed (${res.status}): ${body}`);
  };
  return { stopServer: () => call('stop-server'), startServer: () => call('start-server') };
}
