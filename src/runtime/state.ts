/**
 * The gateway's state: everything a request needs, built from the config in one go and frozen.
 * A reload builds a new State and swaps it in; on any error the old one stays (STYLE.md §8).
 */
import type { Logger } from 'pino';
import { Authenticator } from '../auth/authenticate.js';
import type { Config } from '../config/load.js';
import type { LogonDomain } from '../auth/credentials.js';
import type { Directory } from '../directory/directory.js';
import { FileDirectory } from '../directory/file.js';
import { LdapDirectory } from '../directory/ldap.js';
import type { Lockout } from '../auth/lockout.js';
import { loadPolicy, type Policy } from '../policy/compile.js';
import { Upstream } from '../upstream/upstream.js';
import { frontEndFor, type AuthFrontEnd } from '../auth/front-ends.js';
import type { Service } from '../pipeline/services.js';
import type { BusFactory, StateBus } from '../state/bus.js';
import { localBus } from '../state/local-bus.js';
import { RedisBus } from '../state/redis-bus.js';
import { Sessions } from '../state/sessions.js';

export interface State {
  readonly config: Config;
  readonly directory: Directory;
  readonly domain: LogonDomain;
  readonly policy: Policy;
  readonly authenticator: Authenticator;
  readonly upstream: Upstream;
  /** What the gateway's processes share (the lockout, tunnel counts); built once, kept across reloads. */
  readonly bus: StateBus;
  /** The Basic realm of 401 challenges. */
  readonly realm: string;
  /** The domain's DNS name (from baseDn), which an NTLM Type 3 may carry instead of the NetBIOS name. */
  readonly dnsDomains: ReadonlySet<string>;
  /** Browser sessions of the forms sign-in, on the bus; built once, kept across reloads. */
  readonly sessions: Sessions;
  /** How each service's clients authenticate (`services.<name>.auth`). */
  readonly frontEnds: Readonly<Record<Service, AuthFrontEnd>>;
}

/** Opens the directory the config names (no connection is made yet for LDAP). */
export function openDirectory(config: Config, log: Pick<Logger, 'warn'>): Directory {
  return config.directory.type === 'ldap'
    ? new LdapDirectory(config.directory, log)
    : FileDirectory.load(config.directory);
}

export function logonDomain(config: Config): LogonDomain {
  return { netbios: config.directory.netbiosDomain, upnSuffixes: config.directory.upnSuffixes };
}

/**
 * Builds the full state: opens the directory and compiles the policy against it. On a reload,
 * `previous` hands over what must survive it: the lockout state always, with the new settings
 * applied (a reload must not forgive an attacker), and the credential caches when the directory
 * and cache settings are the same (cached group standings are keyed by policy version, so a new
 * policy never reuses them).
 * The state bus (`makeBus`, default: this process alone) is built with the first state and handed
 * over with the lockout.
 */
export async function buildState(
  config: Config,
  log: Pick<Logger, 'warn'>,
  previous?: State,
  makeBus: BusFactory = localBus,
): Promise<State> {
  const directory = openDirectory(config, log);
  const domain = logonDomain(config);
  try {
    const policy = await loadPolicy(config.policyFile, directory, domain);
    const carry = previous && {
      lockout: previous.authenticator.lockout, // reconfigured, never forgotten
      // A `file` directory is re-read on reload: its users and groups may have changed.
      cache:
        sameJson(previous.config.cache, config.cache) &&
        sameJson(previous.config.directory, config.directory) &&
        config.directory.type === 'ldap'
          ? previous.authenticator.cache
          : undefined,
    };
    const authenticator = new Authenticator(
      { directory, domain, cache: config.cache, lockout: config.lockout, onStale: staleWarning(log) },
      carry,
    );
    const bus = previous?.bus ?? connected(authenticator.lockout, makeBus);
    previous?.sessions.reconfigure(config.session);
    return Object.freeze({
      config,
      directory,
      domain,
      policy,
      authenticator,
      bus,
      sessions: previous?.sessions ?? new Sessions(bus, config.session),
      upstream:
        previous && sameJson(previous.config.upstream, config.upstream) && sameJson(previous.config.http, config.http)
          ? previous.upstream // keep the pinned upstream connections (and NTLM sessions)
          : // the servers that stay keep their connections, health and NTLM sessions
            new Upstream(config.upstream, Math.min(config.http.keepAliveTimeoutMs, 110_000), log, previous?.upstream),
      realm: config.names.externalList[0] ?? 'exgate',
      frontEnds: frontEndsFor(config, config.names.externalList[0] ?? 'exgate'),
      dnsDomains: new Set([dnToDomain(config.directory.baseDn ?? '')].map((d) => d.toLowerCase()).filter(Boolean)),
    });
  } catch (err) {
    await directory.close();
    throw err;
  }
}

/** The services some policy rule allows: /readyz wants a healthy Exchange server for each of them. */
export function allowedServices(policy: Policy): Service[] {
  return [...policy.byService].filter(([, rules]) => rules.allow.length > 0).map(([service]) => service);
}

/** One front-end per service, as its `auth` says. */
function frontEndsFor(config: Config, realm: string): Readonly<Record<Service, AuthFrontEnd>> {
  const entries = Object.entries(config.services).map(([service, settings]) => [
    service,
    frontEndFor(settings.auth, realm),
  ]);
  return Object.freeze(Object.fromEntries(entries) as Record<Service, AuthFrontEnd>);
}

/**
 * The bus `state.redis` names, else `local` (this process alone, or a worker's IPC to the primary).
 * With workers, each worker is a member of its own on Redis and the primary's Hub carries nothing: one
 * path for shared state, and no primary in the way of a reservation. While Redis is away each worker
 * decides alone, so the split counts every process: threshold / (instances × workers).
 */
export function sharedBus(
  config: Config,
  log: Pick<Logger, 'warn' | 'info'>,
  onUp: (up: boolean) => void,
  local: BusFactory | undefined,
  inWorker: boolean,
): BusFactory | undefined {
  const redis = config.state.redis;
  if (!redis) return local;
  const instances = config.state.instances * (inWorker ? config.workers : 1);
  onUp(false); // until it connects
  return (lockout) => new RedisBus(lockout, { redis, instances, log, onUp });
}

function connected(lockout: Lockout, makeBus: BusFactory): StateBus {
  const bus = makeBus(lockout);
  lockout.connect(bus);
  return bus;
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** `DC=lab,DC=test` → `lab.test`. */
function dnToDomain(dn: string): string {
  return dn
    .split(',')
    .map((p) => p.trim())
    .filter((p) => /^dc=/i.test(p))
    .map((p) => p.slice(3))
    .join('.');
}

/** Warns (at most once a minute) that sign-ins are answered from expired cache entries. */
function staleWarning(log: Pick<Logger, 'warn'>): (err: Error) => void {
  let last = 0;
  return (err) => {
    if (Date.now() - last < 60_000) return;
    last = Date.now();
    log.warn(
      { err: err.message },
      'directory unreachable: answering from expired cache entries (cache.staleIfErrorSeconds)',
    );
  };
}
