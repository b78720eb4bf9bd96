/**
 * Address ranges written as CIDRs (`10.0.0.0/24`, `2001:db8::/64`; a bare address is one host),
 * for `listen.proxyProtocol.from`. Matching is node:net's BlockList, which also matches an
 * IPv4-mapped IPv6 peer (`::ffff:10.0.0.5`, a socket listening on `::`) against IPv4 ranges.
 */
import { BlockList, isIP } from 'node:net';

export interface Cidr {
  readonly address: string;
  readonly prefix: number;
  readonly family: 'ipv4' | 'ipv6';
}

/** Parses `address[/prefix]`; null when it is not one (the prefix is 0-32 or 0-128, no leading zeros). */
export function parseCidr(text: string): Cidr | null {
  const slash = text.indexOf('/');
  const address = slash < 0 ? text : text.slice(0, slash);
  const version = isIP(address);
  if (version === 0 || address.includes('%')) return null;
  const max = version === 4 ? 32 : 128;
  const prefixText = slash < 0 ? String(max) : text.slice(slash + 1);
  if (!/^(0|[1-9]\d{0,2})$/.test(prefixText)) return null;
  const prefix = Number(prefixText);
  if (prefix > max) return null;
  return { address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

/** A set of ranges; `has` answers for a peer address as Node reports it. Invalid entries are skipped. */
export class AddressRanges {
  readonly #list = new BlockList();
  readonly size: number;

  constructor(cidrs: readonly string[]) {
    let n = 0;
    for (const text of cidrs) {
      const c = parseCidr(text);
      if (c === null) continue; // the schema refuses these; never here from a loaded config
      this.#list.addSubnet(c.address, c.prefix, c.family);
      n++;
    }
    this.size = n;
  }

  has(address: string | undefined): boolean {
    if (address === undefined) return false;
    const version = isIP(address);
    return version !== 0 && this.#list.check(address, version === 4 ? 'ipv4' : 'ipv6');
  }
}
