/**
 * TLS: the certificate from files (or a generated lab certificate), and the TLS server the HTTP
 * server sits behind: TLS 1.2 at least, ALPN http/1.1 only, no renegotiation, a handshake cut at
 * `tls.handshakeTimeoutMs`. The HTTP server is fed decrypted sockets so that a later stage can
 * look at a request head before Node's HTTP parser does (research/node-proxy.md §1.3).
 */
import { constants, createPrivateKey, X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { dirname } from 'node:path';
import { createServer, type SecureContextOptions, type Server, type TLSSocket } from 'node:tls';
import { generate } from 'selfsigned';
import type { Config } from '../config/load.js';
import { ConfigError } from '../errors.js';

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
    notAfterDate: new Date(Date.now() + 397 * 86_400_000), // the CA/Browser Forum's longest lifetime
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
    throw new ConfigError([
      {
        file,
        key: 'tls',
        message: `cannot read certificate or key: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
      },
    ]);
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
  const names = (x509.subjectAltName ?? '')
    .split(', ')
    .map((s) => s.replace(/^(DNS|IP Address):/, ''))
    .filter(Boolean);
  return { cert, key, notAfter: new Date(x509.validTo), names };
}

export interface TlsServerOptions {
  readonly minVersion: 'TLSv1.2' | 'TLSv1.3';
  readonly handshakeTimeoutMs: number;
}

/**
 * The secure-context part of the server options, also used for a certificate reload (Node's
 * setSecureContext replaces `secureOptions` too, so the renegotiation ban lives here).
 * TLS 1.2 renegotiation is refused outright: no Exchange client needs it, and Node only counts
 * renegotiations (3 per 10 minutes, then an error event that closes nothing): 20 of 20 were
 * accepted in 262 ms while the Outlook Anywhere peek waited for the first byte. OpenSSL answers
 * a renegotiating ClientHello with a no_renegotiation alert; TLS 1.3 has no renegotiation.
 */
export function secureContextOptions(material: TlsMaterial, opts: TlsServerOptions): SecureContextOptions {
  const secureOptions = constants.SSL_OP_NO_RENEGOTIATION;
  return { cert: material.cert, key: material.key, minVersion: opts.minVersion, secureOptions };
}

/** Called with a handshake that failed or timed out, just before its socket is destroyed. */
export type HandshakeFailed = (err: NodeJS.ErrnoException, socket: TLSSocket) => void;

/**
 * Destroys the socket of every handshake that fails. Node 20 only emits `tlsClientError` when
 * `handshakeTimeout` expires and keeps the socket (200 of 200 stalled handshakes were still open
 * after 5.5 s with a 3 s timeout). The timeout runs from accept and is not reset by handshake
 * bytes, so a silent client and one that trickles its ClientHello are both cut in time.
 */
export function cutFailedHandshakes(server: Server, onFailed: HandshakeFailed = () => {}): void {
  server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: TLSSocket) => {
    onFailed(err, socket);
    socket.destroy();
  });
}

/**
 * A TLS server that hands every established connection to `onConnection` (Outlook and
 * ActiveSync speak HTTP/1.1; browsers fall back) and failed handshakes to `onFailed`.
 */
export function createTlsServer(
  material: TlsMaterial,
  opts: TlsServerOptions,
  onConnection: (socket: TLSSocket) => void,
  onFailed?: HandshakeFailed,
): Server {
  const server = createServer(
    {
      ...secureContextOptions(material, opts),
      ALPNProtocols: ['http/1.1'], // a bare tls.Server negotiates no ALPN unless told
      handshakeTimeout: opts.handshakeTimeoutMs,
      honorCipherOrder: true,
    },
    onConnection,
  );
  cutFailedHandshakes(server, onFailed);
  return server;
}

/** The names in `names` that the certificate does not cover (exact or one-label wildcard SANs). */
export function certificateGaps(material: TlsMaterial, names: readonly string[]): string[] {
  const sans = material.names.map((n) => n.toLowerCase());
  const covered = (name: string) => {
    const n = name.toLowerCase().replace(/\.$/, '');
    return sans.some(
      (san) =>
        san === n || (san.startsWith('*.') && n.endsWith(san.slice(1)) && !n.slice(0, -san.length + 1).includes('.')),
    );
  };
  return names.filter((n) => !covered(n));
}
