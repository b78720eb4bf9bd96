/** How an address is counted by the lockout and the per-source limits: IPv4 as is, IPv6 per /64. */
import { isIPv6 } from 'node:net';

/** The key an address is tracked by: IPv4 as is (also IPv4-mapped IPv6), IPv6 by its /64. */
export function sourceKey(address: string): string {
  if (!address.includes(':')) return address; // IPv4: the common case, no work
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1] as string;
  if (!isIPv6(address)) return address;
  const [head = '', tail = ''] = address.toLowerCase().split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const full = [...left, ...Array(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right];
  return `${full
    .slice(0, 4)
    .map((h) => h.padStart(4, '0'))
    .join(':')}::/64`;
}
