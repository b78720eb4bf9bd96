/** The loaded configuration's shape: validated, resolved (paths, secrets, defaults) and frozen by load.ts. */
import type { NameTable } from '../pipeline/classify.js';
import type { Service, ServiceDefaults } from '../pipeline/services.js';
import type { GatewayFile } from './schema.js';
import type { UpstreamSettings } from './upstream.js';
import type { StateSettings } from './state-load.js';
import type { Secret } from './yaml.js';

export interface LdapSettings {
  readonly type: 'ldap';
  readonly urls: readonly string[];
  readonly ca: string | undefined;
  readonly startTls: boolean;
  readonly bindDn: string;
  readonly bindPassword: Secret;
  /** The key the password came from, named when the DC refuses it. */
  readonly bindPasswordKey?: 'bindPasswordEnv' | 'bindPasswordFile';
  readonly baseDn: string;
  readonly netbiosDomain: string;
  readonly upnSuffixes: readonly string[];
  readonly connectTimeoutMs: number;
  readonly timeoutMs: number;
  readonly maxConcurrentBinds: number;
  readonly maxQueuedBinds: number;
  readonly dcRetrySeconds: number;
}

export interface FileSettings {
  readonly type: 'file';
  readonly path: string;
  readonly baseDn: string;
  readonly netbiosDomain: string;
  readonly upnSuffixes: readonly string[];
}

/** The loaded gateway configuration. Frozen; a reload builds a new one. */
export interface Config {
  readonly file: string;
  /** How many worker processes serve (`auto` resolved to the CPU count). */
  readonly workers: number;
  readonly listen: GatewayFile['listen'];
  readonly tls: GatewayFile['tls'] & { readonly cert: string; readonly key: string };
  readonly names: NameTable & { readonly externalList: readonly string[]; readonly internalList: readonly string[] };
  readonly upstream: UpstreamSettings;
  readonly directory: LdapSettings | FileSettings;
  readonly policyFile: string;
  readonly log: GatewayFile['log'];
  readonly http: GatewayFile['http'];
  readonly cache: GatewayFile['cache'];
  readonly lockout: GatewayFile['lockout'];
  readonly services: Readonly<Record<Service, ServiceDefaults>>;
  readonly session: GatewayFile['session'];
  /** What several gateways share (`state:`); `redis` null: each gateway alone. */
  readonly state: StateSettings;
  readonly admin: GatewayFile['admin'];
  readonly mailboxFlags: GatewayFile['mailboxFlags'];
  /** Every file the gateway reads besides this one: a change to any of them reloads it. */
  readonly watched: readonly string[];
}
