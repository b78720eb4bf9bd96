/**
 * TLS: the certificate from files (or a generated lab certificate), and the TLS server the HTTP
 * server sits behind. TLS 1.2 at least, ALPN http/1.1 only (Outlook and ActiveSync speak
 * HTTP/1.1; browsers fall back). The HTTP server is fed decrypted sockets so that a later stage
 * can look at a request head before Node's HTTP parser does (research/node-proxy.md §1.3).
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { dirname } from 'node:path';
import { createServer, type SecureContextOptions, type Server, type TLSSocket } from 'node:tls';
import { generate } from 'selfsigned';
import type { Config } from './config/load.js';
import { ConfigError } from './errors.js';

export interface TlsMaterial {
  readonly cert: string;
  readonly key: string;
  readonly notAfter: Date;
  readonly names: readonly string[];
}

/**
 * With `tls.selfSigned: true`, writes a sha256 self-signed certificate naming every external and
 * internal name when the cert or key file is missing. Lab use: clients must be told to trust it.
 * Returns true when it generated one.
 */
export async function ensureSelfSigned(config: Config): Promise<boolean> {
  const { cert, key, selfSigned } = config.tls;
  if (!selfSigned || (existsSync(cert) && existsSync(key))) return false;
  const names = [...config.names.externalList, ...config.names.internalList];
  const altNames = names.map((n) => (isIP(n) ? { type: 7 as const, ip: n } : { type: 2 as const, value: n }));
  const pems = await generate([{ name: 'commonName', value: names[0] ?? 'exgate' }], {
    algorithm: 'sha256',
    keySize: 2048,
    notAfterDate: new Date(Date.now() + 397 * 86_400_000),   // the CA/Browser Forum's longest lifetime
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames },
    ],
  });
  mkdirSync(dirname(cert), { recursive: true });
  mkdirSync(dirname(key), { recursive: true });
  writeFileSync(key, pems.private, { mode: 0o600 });
  chmodSync(key, 0o600);
  writeFileSync(cert, pems.cert);
  return true;
}

/** Reads and checks the certificate and key: both parse, and the key belongs to the certificate. */
export function loadTlsMaterial(config: Config): TlsMaterial {
  const { cert: certFile, key: keyFile } = config.tls;
  const file = config.file;
  let cert: string;
  let key: string;
  try {
    cert = readFileSync(certFile, 'utf8');
    key = readFileSync(keyFile, 'utf8');
  } catch (err) {
    throw new ConfigError([{ file, key: 'tls', message: `cannot read certificate or key: ${(err as NodeJS.ErrnoException).code ?? String(err)}` }]);
  }
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch {
    throw new ConfigError([{ file, key: 'tls.cert', message: `${certFile} is not a PEM certificate` }]);
  }
  try {
    if (!x509.checkPrivateKey(createPrivateKey(key))) {
      throw new ConfigError([{ file, key: 'tls.key', message: `${keyFile} does not belong to ${certFile}` }]);
    }
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError([{ file, key: 'tls.key', message: `${keyFile} is not a PEM private key` }]);
  }
  const names = (x509.subjectAltName ?? '').split(', ').map((s) => s.replace(/^(DNS|IP Address):/, '')).filter(Boolean);
  return { cert, key, notAfter: new Date(x509.validTo), names };
}

export interface TlsServerOptions {
  readonly minVersion: 'TLSv1.2' | 'TLSv1.3';
  readonly handshakeTimeoutMs: number;
}

/** The secure-context part of the server options, also used for a certificate reload. */
export function secureContextOptions(material: TlsMaterial, opts: TlsServerOptions): SecureContextOptions {
  return { cert: material.cert, key: material.key, minVersion: opts.minVersion };
}

/** A TLS server that hands every established connection to `onConnection`. */
export function createTlsServer(material: TlsMaterial, opts: TlsServerOptions, onConnection: (socket: TLSSocket) => void): Server {
  return createServer({
    ...secureContextOptions(material, opts),
    ALPNProtocols: ['http/1.1'],           // a bare tls.Server negotiates no ALPN unless told
    handshakeTimeout: opts.handshakeTimeoutMs,
    honorCipherOrder: true,
  }, onConnection);
}

/** The names in `names` that the certificate does not cover (exact or one-label wildcard SANs). */
export function certificateGaps(material: TlsMaterial, names: readonly string[]): string[] {
  const sans = material.names.map((n) => n.toLowerCase());
  const covered = (name: string) => {
    const n = name.toLowerCase().replace(/\.$/, '');
    return sans.some((san) => san === n || (san.startsWith('*.') && n.endsWith(san.slice(1)) && !n.slice(0, -san.length + 1).includes('.')));
  };
  return names.filter((n) => !covered(n));
}
