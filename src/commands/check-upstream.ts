/**
 * `exgate check`'s upstream probe: one connection to Exchange with the trust (upstream.ca), the name
 * (upstream.servername) and insecureSkipVerify exactly as forwarding uses them, and one request.
 * The certificate is inspected rather than refused, so a missing CA and a wrong name are told apart
 * and both reported in words an admin can act on; the gateway itself would only answer 502.
 */
import { connect as connectTcp, isIP, type Socket } from 'node:net';
import { checkServerIdentity, connect as connectTls, TLSSocket, type PeerCertificate } from 'node:tls';
import type { Config } from '../config/load.js';
import type { ConfigProblem } from '../errors.js';

/** Builds a problem at a key of the gateway config (with its line). */
export type Locate = (path: readonly (string | number)[], message: string) => ConfigProblem;

/** Trust failures of OpenSSL's verification (X509_V_ERR_*) that a CA file fixes. */
const UNTRUSTED = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_UNTRUSTED',
]);

export interface UpstreamResult {
  readonly problems: ConfigProblem[];
  /** What was reached, for the summary line. */
  readonly note: string;
}

/** Connects to Exchange as forwarding would, and says in words what stops it. */
export async function probeUpstream(upstream: Config['upstream'], at: Locate): Promise<UpstreamResult> {
  const { url } = upstream;
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
  const failed = (message: string, err: unknown) => {
    const e = err as NodeJS.ErrnoException;
    return { problems: [at(['upstream', 'url'], `${message}: ${e.code ?? e.name}: ${e.message}`)], note: '' };
  };
  let socket: Socket;
  try {
    socket = await (url.protocol === 'https:' ? tlsConnect : tcpConnect)(upstream, host, port);
  } catch (err) {
    return failed(`cannot connect to ${url.origin}`, err);
  }
  try {
    const problems = socket instanceof TLSSocket ? certificateProblems(socket, upstream, at) : [];
    if (problems.length > 0) return { problems, note: '' };
    const status = await firstStatus(socket, upstream.servername, upstream.connectTimeoutMs);
    const trust =
      url.protocol !== 'https:'
        ? 'plain HTTP'
        : upstream.insecureSkipVerify
          ? 'certificate NOT verified (insecureSkipVerify)'
          : 'certificate verified';
    return { problems: [], note: `${url.origin} as ${upstream.servername}, ${trust}, HTTP ${status}` };
  } catch (err) {
    return failed(`${url.origin} did not answer an HTTP request`, err);
  } finally {
    socket.destroy();
  }
}

function certificateProblems(socket: TLSSocket, upstream: Config['upstream'], at: Locate): ConfigProblem[] {
  if (upstream.insecureSkipVerify) return [];
  const cert = socket.getPeerCertificate(true);
  const problems: ConfigProblem[] = [];
  const code = socket.authorized ? '' : String((socket.authorizationError as unknown as string | null) ?? '');
  const issuer = cert.issuer?.CN ?? 'an unknown issuer';
  if (UNTRUSTED.has(code)) {
    problems.push(
      at(
        ['upstream', 'ca'],
        upstream.ca
          ? `certificate not trusted — Exchange's certificate was issued by ${issuer}, which upstream.ca does ` +
              `not hold; set upstream.ca to that CA (${code})`
          : "certificate not trusted — set upstream.ca to the CA that issued Exchange's certificate " +
              `(${issuer}) (${code})`,
      ),
    );
  } else if (code === 'CERT_HAS_EXPIRED') {
    const expired = new Date(cert.valid_to).toISOString();
    problems.push(at(['upstream', 'url'], `Exchange's certificate expired on ${expired}`));
  } else if (code) {
    problems.push(at(['upstream', 'url'], `Exchange's certificate is refused: ${code}`));
  }
  if (checkServerIdentity(upstream.servername, cert as PeerCertificate)) {
    problems.push(
      at(
        ['upstream', 'servername'],
        `name mismatch — Exchange's certificate does not name ${upstream.servername}; ` +
          `set upstream.servername to a name in Exchange's certificate: ${namesOf(cert)}`,
      ),
    );
  }
  return problems;
}

function namesOf(cert: PeerCertificate): string {
  const sans = (cert.subjectaltname ?? '')
    .split(', ')
    .map((s) => s.replace(/^(DNS|IP Address):/, ''))
    .filter(Boolean);
  return sans.length > 0 ? sans.join(', ') : `${cert.subject?.CN ?? '(none)'} (subject CN only)`;
}

/** A TLS connection with the forwarding settings; verification is judged afterwards, not refused. */
function tlsConnect(upstream: Config['upstream'], host: string, port: number): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connectTls({
      host,
      port,
      // SNI as forwarding sends it: the configured name, none for an IP address (RFC 6066 §3).
      ...(isIP(upstream.servername) ? {} : { servername: upstream.servername }),
      ...(upstream.ca ? { ca: upstream.ca } : {}),
      // Judged afterwards, each failure in its own words: the chain here, the name by certificateProblems.
      rejectUnauthorized: false,
      checkServerIdentity: () => undefined,
      minVersion: 'TLSv1.2',
      ALPNProtocols: ['http/1.1'],
    });
    bound(socket, upstream.connectTimeoutMs, reject);
    socket.once('secureConnect', () => {
      socket.setTimeout(0);
      socket.removeAllListeners('error');
      resolve(socket);
    });
  });
}

function tcpConnect(upstream: Config['upstream'], host: string, port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connectTcp({ host, port });
    bound(socket, upstream.connectTimeoutMs, reject);
    socket.once('connect', () => {
      socket.setTimeout(0);
      socket.removeAllListeners('error');
      resolve(socket);
    });
  });
}

function bound(socket: Socket, timeoutMs: number, reject: (err: Error) => void): void {
  socket.setTimeout(timeoutMs, () => {
    socket.destroy();
    reject(timedOut(`no answer within ${timeoutMs} ms (upstream.connectTimeoutMs)`));
  });
  socket.once('error', (err) => {
    socket.destroy();
    reject(err);
  });
}

/** Sends Exchange's own health-check request and resolves with the status of the answer. */
function firstStatus(socket: Socket, servername: string, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let head = '';
    socket.setTimeout(timeoutMs, () => reject(timedOut(`no answer within ${timeoutMs} ms`)));
    socket.on('error', reject);
    socket.on('close', () => reject(Object.assign(new Error('closed without an answer'), { code: 'ECONNRESET' })));
    socket.on('data', (chunk: Buffer) => {
      head += chunk.toString('latin1');
      const line = /^HTTP\/1\.[01] (\d{3})/.exec(head);
      if (line) resolve(Number(line[1]));
      else if (head.includes('\r\n') || head.length > 64) {
        reject(new Error(`not HTTP: ${JSON.stringify(head.slice(0, 40))}`));
      }
    });
    const host = isIP(servername) === 6 ? `[${servername}]` : servername;
    socket.write(`GET /owa/healthcheck.htm HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  });
}

function timedOut(message: string): Error {
  return Object.assign(new Error(message), { code: 'ETIMEDOUT' });
}
