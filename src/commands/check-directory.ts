/**
 * `exgate check`'s look at AD itself: the config's baseDn, netbiosDomain and upnSuffixes against
 * what the domain says of itself (directory/domain-info.ts). A wrong NetBIOS name or UPN suffix
 * loads fine and then refuses every user who signs in with it, so it is caught here instead.
 */
import type { LdapSettings } from '../config/load.js';
import type { ConfigProblem } from '../errors.js';
import { readDomainInfo, type DomainInfo } from '../directory/domain-info.js';
import type { Locate } from './check-upstream.js';

export interface DomainCheck {
  readonly problems: ConfigProblem[];
  /** False when baseDn does not exist: nothing can be resolved under it. */
  readonly baseDnExists: boolean;
  readonly note: string;
}

/** The problems of the directory section that only AD can reveal. Throws DirectoryUnavailableError. */
export async function domainProblems(settings: LdapSettings, at: Locate): Promise<DomainCheck> {
  const info = await readDomainInfo(settings);
  const problems: ConfigProblem[] = [];
  if (!info.baseDnExists) {
    const domain = info.domainDn ? `; the domain is ${info.domainDn}` : '';
    problems.push(at(['directory', 'baseDn'], `${settings.baseDn} does not exist in the directory${domain}`));
  }
  if (!info.domainDn) {
    const domains = info.domains.length > 0 ? `domains: ${info.domains.join('; ')}` : 'no domain readable';
    problems.push(at(['directory', 'baseDn'], `${settings.baseDn} is in no domain of the forest (${domains})`));
    return { problems, baseDnExists: info.baseDnExists, note: '' };
  }
  problems.push(...namingProblems(settings, info, at));
  const note = `domain ${info.dnsName ?? info.domainDn}, NetBIOS ${info.netbios ?? '?'}`;
  return { problems, baseDnExists: info.baseDnExists, note };
}

function namingProblems(settings: LdapSettings, info: DomainInfo, at: Locate): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  if (info.netbios && info.netbios.toUpperCase() !== settings.netbiosDomain.toUpperCase()) {
    problems.push(
      at(
        ['directory', 'netbiosDomain'],
        `${settings.netbiosDomain} is not the domain's NetBIOS name: AD says ${info.netbios} ` +
          `(nETBIOSName of ${info.domainDn} in CN=Partitions); DOMAIN\\user sign-ins would all be refused`,
      ),
    );
  }
  for (const [i, suffix] of settings.upnSuffixes.entries()) {
    if (info.upnSuffixes.includes(suffix.toLowerCase().replace(/\.$/, ''))) continue;
    problems.push(
      at(
        ['directory', 'upnSuffixes', i],
        `${suffix} is not a UPN suffix AD knows; AD knows: ${info.upnSuffixes.join(', ')} ` +
          '(add it in Active Directory Domains and Trusts, or remove it here)',
      ),
    );
  }
  return problems;
}
