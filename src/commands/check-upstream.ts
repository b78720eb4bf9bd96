/**
 * `exgate check`'s upstream probe: one connection to Exchange with the trust (upstream.ca), the name
 * (upstream.servername) and insecureSkipVerify exactly as forwarding uses them, and one request.
 * The certificate is inspected rather than refused, so a missing CA and a wrong name are told apart
 * and both reported in words an admin can act on; the gateway itself would only answer 502.
 */
import { connect as connectTcp, isIP, type Socket } from 'node:net';
import { checkServerIdentity, connect as connectTls, TLSSocket, type PeerCertificate } from 'node:tls';
import type { Config } from '../config/load.js';
import type { UpstreamServer } from '../config/upstream.js';
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
  /** Worth knowing, but forwarding works: an unhealthy health page (check-pool.ts). */
  readonly warnings?: ConfigProblem[];
  /** Lines printed under the summary line: the health table of a pool. */
  readonly details?: string[];
}

/** Where a server's own problems are keyed (`upstream.url` or `upstream.servers[i]`), and its name in them. */
export interface ServerPlace {
  readonly key: readonly (string | number)[];
  /** Put before each message when there are several servers (`127.0.0.1:8443: `); '' with one. */
  readonly prefix: string;
}

/** Connects to Exchange as forwarding would, and says in words what stops it. */
export async function probeUpstream(upstream: Config['upstream'], at: Locate): Promise<UpstreamResult> {
  const server = upstream.servers[0] as UpstreamServer;
  const reached = await reach(upstream, server, at, { key: ['upstream', 'url'], prefix: '' });
  if (!reached.socket) return { problems: reached.problems, note: '' };
  const { socket } = reached;
  try {
    const status = await firstStatus(socket, server.servername, upstream.connectTimeoutMs);
    return { problems: [], note: `${server.origin} as ${server.servername}, ${trustOf(upstream)}, HTTP ${status}` };
  } catch (err) {
    return {
      problems: [failure(at, ['upstream', 'url'], `${server.origin} did not answer an HTTP request`, err)],
      note: '',
    };
  } finally {
    socket.destroy();
  }
}

/** How Exchange's certificate is judged, for the summary line. */
export function trustOf(upstream: Config['upstream']): string {
  if (upstream.url.protocol !== 'https:') return 'plain HTTP';
  return upstream.insecureSkipVerify ? 'certificate NOT verified (insecureSkipVerify)' : 'certificate verified';
}

/**
 * One connection to `server` with the trust and name forwarding uses, its certificate judged: the open
 * socket when all is well (the caller ends it), else null and what stops it.
 */
export async function reach(
  upstream: Config['upstream'],
  server: UpstreamServer,
  at: Locate,
  place: ServerPlace,
): Promise<{ socket: Socket | null; problems: ConfigProblem[] }> {
  const { url, servername } = server;
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
  let socket: Socket;
  try {
    socket = await (url.protocol === 'https:' ? tlsConnect : tcpConnect)(upstream, servername, host, port);
  } catch (err) {
    return { socket: null, problems: [failure(at, place.key, `cannot connect to ${url.origin}`, err)] };
  }
  const problems = socket instanceof TLSSocket ? certificateProblems(socket, upstream, servername, at, place) : [];
  if (problems.length === 0) return { socket, problems };
  socket.destroy();
  return { socket: null, problems };
}

function failure(at: Locate, key: readonly (string | number)[], message: string, err: unknown): ConfigProblem {
  const e = err as NodeJS.ErrnoException;
  return at(key, `${message}: ${e.code ?? e.name}: ${e.message}`);
}

function certificateProblems(
  socket: TLSSocket,
  upstream: Config['upstream'],
  servername: string,
  located: Locate,
  place: ServerPlace,
): ConfigProblem[] {
  if (upstream.insecureSkipVerify) return [];
  const at: Locate = (path, message) => located(path, place.prefix + message);
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
    problems.push(at(place.key, `Exchange's certificate expired on ${expired}`));
  } else if (code) {
    problems.push(at(place.key, `Exchange's certificate is refused: ${code}`));
  }
  if (checkServerIdentity(servername, cert as PeerCertificate)) {
    problems.push(
      at(
        ['upstream', 'servername'],
        `name mismatch — Exchange's certificate does not name ${servername}; ` +
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
function tlsConnect(upstream: Config['upstream'], servername: string, host: string, port: number): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connectTls({
      host,
      port,
      // SNI as forwarding sends it: the configured name, none for an IP address (RFC 6066 §3).
      ...(isIP(servername) ? {} : { servername }),
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

function tcpConnect(upstream: Config['upstream'], _name: string, host: string, port: number): Promise<Socket> {
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
