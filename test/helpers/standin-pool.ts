/**
 * Several Exchange stand-ins, as the members of one DAG: HTTPS on 127.0.0.1:0, all with the same certificate
 * for `exchange-be.lab.test` from one throwaway test CA (DAG members share one certificate), each with its own
 * FQDN (`ex1.lab.test`, `ex2.lab.test`, …) in healthcheck.htm bodies and the X-Standin-Server header.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startExchangeStandin, type ExchangeStandin, type StandinOptions } from '../../src/standin/exchange.js';

/** The name every pool member's certificate carries; the gateway's `upstream.servername`. */
export const POOL_SERVERNAME = 'exchange-be.lab.test';

export interface StandinPool {
  /** The stand-ins, in order: `standins[i]` is named `ex${i + 1}.lab.test`. */
  readonly standins: readonly ExchangeStandin[];
  /** Their base URLs (`https://127.0.0.1:<port>`), for `upstream.servers`. */
  readonly urls: readonly string[];
  /** PEM of the test CA that issued the shared certificate. */
  readonly ca: string;
  /** Path of a file holding `ca`, for `upstream.ca`. */
  readonly caFile: string;
  /** The name to check the certificate against (SNI): {@link POOL_SERVERNAME}. */
  readonly servername: string;
  /** The stand-in named `name` (as in its healthcheck body); throws when there is none. */
  byName(name: string): ExchangeStandin;
  /** close closes every stand-in and removes the files this helper wrote. Safe to call twice. */
  close(): Promise<void>;
}

export interface PoolOptions {
  /** Options for every stand-in (`tls` and `name` are set by the pool). */
  readonly standin?: Omit<StandinOptions, 'tls' | 'name'>;
  /** Directory to write `pool-ca.pem` into (kept on close). Default: a temp directory removed on close. */
  readonly dir?: string;
}

/** startStandinPool starts `count` stand-ins (default 2) and resolves once all listen. */
export async function startStandinPool(count = 2, opts: PoolOptions = {}): Promise<StandinPool> {
  const work = mkdtempSync(join(tmpdir(), 'exgate-pool-'));
  const tls = issue(work);
  const caFile = join(opts.dir ?? work, 'pool-ca.pem');
  writeFileSync(caFile, tls.ca);
  const standins: ExchangeStandin[] = [];
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      await Promise.all(standins.map((s) => s.close()));
      rmSync(work, { recursive: true, force: true });
    })());
  try {
    for (let i = 1; i <= count; i++) {
      standins.push(await startExchangeStandin({ ...opts.standin, tls, name: `ex${i}.lab.test` }));
    }
  } catch (err) {
    await close();
    throw err;
  }
  return {
    standins,
    urls: standins.map((s) => s.url),
    ca: tls.ca,
    caFile,
    servername: POOL_SERVERNAME,
    byName: (name) => {
      const found = standins.find((s) => s.name === name);
      if (!found) throw new Error(`no stand-in named ${name}`);
      return found;
    },
    close,
  };
}

/** issue makes a test CA and a P-256 server certificate for POOL_SERVERNAME signed by it, in `dir`. */
function issue(dir: string): { cert: string; key: string; ca: string } {
  const at = (name: string): string => join(dir, name);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  const run = (args: string[]): void => void execFileSync('openssl', args, { stdio: 'ignore' });
  run([
    'req',
    '-x509',
    ...ec,
    '-days',
    '2',
    '-subj',
    '/CN=exgate test Exchange CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
    '-keyout',
    at('ca.key'),
    '-out',
    at('ca.crt'),
  ]);
  run(['req', '-new', ...ec, '-subj', `/CN=${POOL_SERVERNAME}`, '-keyout', at('server.key'), '-out', at('server.csr')]);
  writeFileSync(
    at('server.ext'),
    `subjectAltName=DNS:${POOL_SERVERNAME}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`,
  );
  run([
    'x509',
    '-req',
    '-in',
    at('server.csr'),
    '-CA',
    at('ca.crt'),
    '-CAkey',
    at('ca.key'),
    '-CAcreateserial',
    '-days',
    '2',
    '-extfile',
    at('server.ext'),
    '-out',
    at('server.crt'),
  ]);
  return {
    cert: readFileSync(at('server.crt'), 'utf8'),
    key: readFileSync(at('server.key'), 'utf8'),
    ca: readFileSync(at('ca.crt'), 'utf8'),
  };
}
