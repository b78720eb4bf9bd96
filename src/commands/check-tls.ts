/**
 * `exgate check`'s look at the certificate chain in tls.cert. A server must send its intermediates
 * (RFC 8446 §4.4.2): desktop browsers often fetch a missing one themselves (AIA), but Outlook on
 * some platforms and many ActiveSync devices do not, and refuse the gateway. A warning, not an error.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/**
 * Why the chain in `file` looks incomplete, or null: the leaf (the first certificate) is not
 * self-signed and no other certificate in the file issued it.
 */
export function missingIntermediate(file: string): string | null {
  let certs: X509Certificate[];
  try {
    certs = (readFileSync(file, 'utf8').match(PEM_CERTIFICATE) ?? []).map((pem) => new X509Certificate(pem));
  } catch {
    return null; // unreadable or not PEM: loadTlsMaterial says so
  }
  const [leaf, ...rest] = certs;
  if (!leaf) return null;
  if (leaf.subject === leaf.issuer && leaf.verify(leaf.publicKey)) return null; // self-signed: nothing to chain to
  if (rest.some((c) => leaf.checkIssued(c) && leaf.verify(c.publicKey))) return null;
  return (
    `the chain has no intermediate: ${file} holds the certificate of ${cn(leaf.subject)} issued by ` +
    `${cn(leaf.issuer)}, but not ${cn(leaf.issuer)}'s certificate; clients that lack it (many phones) will refuse ` +
    'the gateway. Append the intermediate certificate(s) after the server certificate'
  );
}

function cn(name: string): string {
  return /(?:^|\n)CN=([^\n]+)/.exec(name)?.[1] ?? name.replace(/\n/g, ', ');
}
