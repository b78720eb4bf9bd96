/**
 * The Exchange servers behind the gateway and the choice among them. A client connection is bound,
 * per protocol, to the healthy server with the fewest open connections, and stays there while that
 * server stays healthy: NTLM authenticates the upstream connection, and tunnels and long-polls live
 * on it. An unhealthy server gets no new bindings; what runs on it finishes (closed gracefully).
 */
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { Client } from 'undici';
import type { UpstreamServer, UpstreamSettings } from '../config/upstream.js';
import type { Service } from '../pipeline/services.js';
import {
  firstDelayMs,
  Health,
  HEALTH_GROUPS,
  healthGroupOf,
  nextDelayMs,
  PROBE_PATH,
  probeOnce,
  type HealthGroup,
  type ProbeResult,
} from './health.js';

/** What the choice looks at for each server. */
export interface Candidate {
  readonly healthy: boolean;
  readonly connections: number;
}

/** Index of the healthy candidate with the fewest connections, ties taken in turn; -1 when none is healthy. */
export function leastConnections(candidates: readonly Candidate[], turn: number): number {
  let fewest = Infinity;
  const ties: number[] = [];
  candidates.forEach((c, i) => {
    if (!c.healthy || c.connections > fewest) return;
    if (c.connections < fewest) ties.length = 0;
    fewest = c.connections;
    ties.push(i);
  });
  return ties.length === 0 ? -1 : (ties[turn % ties.length] as number);
}

/** One server of the pool: its connection settings, health per protocol, and the connections bound to it. */
export class Member {
  readonly health = new Map<HealthGroup, Health>();
  /** Removed by a reload: no new bindings, no probes; what runs on it finishes. */
  retired = false;
  /** Upstream connections (one undici Client each) bound to this server now, across protocols. */
  readonly clients = new Set<Client>();
  readonly timers = new Map<HealthGroup, NodeJS.Timeout>();
  readonly probing = new Set<HealthGroup>();

  constructor(
    readonly server: UpstreamServer,
    readonly options: Client.Options,
    /** The same without counting connect failures as passive health (a probe counts its own result). */
    readonly probeOptions: Client.Options,
    /** The connection settings this member was made with: a reload that changes them makes a new one. */
    readonly settingsKey: string,
    now: number,
  ) {
    for (const g of HEALTH_GROUPS) this.health.set(g, new Health(now));
  }

  /** Raw connections bound to it (Outlook Anywhere tunnels). */
  readonly tunnels = new Set<Socket>();

  get connections(): number {
    return this.clients.size + this.tunnels.size;
  }

  /** Counts a raw connection to this server until it closes. */
  hold(socket: Socket): void {
    this.tunnels.add(socket);
    socket.once('close', () => this.tunnels.delete(socket));
  }

  /** Ends one of its connections: gracefully (what is in flight finishes) or at once. */
  end(client: Client, graceful: boolean): void {
    this.clients.delete(client);
    void (graceful ? client.close() : client.destroy()).catch(() => {});
  }

  up(group: HealthGroup): boolean {
    return !this.retired && (this.health.get(group)?.up ?? true);
  }
}

/** A client connection's upstream side: its connections, one per server, and its server per protocol. */
interface SocketSide {
  readonly clients: Map<Member, Client>;
  readonly bound: Map<HealthGroup, Member>;
}

export interface Binding {
  readonly member: Member;
  readonly client: Client;
}

/** The operational log: `info` (a server back) is optional. */
export type OpsLog = Pick<Logger, 'warn'> & Partial<Pick<Logger, 'info'>>;

export interface PoolHooks {
  readonly log?: OpsLog | undefined;
  /** The upstream connection of a client connection closed: its NTLM session is gone. */
  readonly disconnected: (socket: Socket) => void;
  readonly now?: () => number;
}

export class Pool {
  readonly members: readonly Member[];
  readonly #sides: WeakMap<Socket, SocketSide>;
  readonly #now: () => number;
  #turn = 0;
  #stopped = false;

  /** `make` builds a server's Client options; `previous` hands over the members that stay and the bindings. */
  constructor(
    readonly settings: UpstreamSettings,
    make: (
      server: UpstreamServer,
      pool: Pool,
    ) => { options: Client.Options; probeOptions: Client.Options; settingsKey: string },
    private readonly hooks: PoolHooks,
    previous?: Pool,
  ) {
    this.#now = hooks.now ?? Date.now;
    this.#sides = previous ? previous.#sides : new WeakMap();
    const members = settings.servers.map((server) => {
      const made = make(server, this);
      const kept = previous?.members.find((m) => m.server.key === server.key && m.settingsKey === made.settingsKey);
      return kept ?? new Member(server, made.options, made.probeOptions, made.settingsKey, this.#now());
    });
    for (const old of previous?.members ?? []) if (!members.includes(old)) old.retired = true;
    previous?.stop();
    this.members = members;
  }

  /** A server for a connection of its own (a tunnel): healthy for `service`, fewest connections; null: none. */
  pick(service: Service, exclude?: ReadonlySet<Member>): Member | null {
    const group = healthGroupOf(service);
    const candidates = this.members.map((m) => ({
      healthy: m.up(group) && !exclude?.has(m),
      connections: m.connections,
    }));
    return this.members[leastConnections(candidates, this.#turn++)] ?? null;
  }

  /** The server and upstream connection for this client connection's request to `service`; null: none healthy. */
  bind(socket: Socket, service: Service, exclude?: ReadonlySet<Member>): Binding | null {
    const group = healthGroupOf(service);
    const side = this.#side(socket);
    const usable = (m: Member) => m.up(group) && !exclude?.has(m) && this.members.includes(m);
    let chosen = side.bound.get(group);
    if (!chosen || !usable(chosen)) {
      // A server this connection already has a connection to costs no new one: NTLM stays authenticated.
      chosen = [...side.clients.keys()].find(usable);
      if (!chosen) {
        const i = leastConnections(
          this.members.map((m) => ({ healthy: usable(m), connections: m.connections })),
          this.#turn++,
        );
        if (i < 0) return null;
        chosen = this.members[i] as Member;
      }
      const before = side.bound.get(group);
      side.bound.set(group, chosen);
      if (before && before !== chosen) this.#release(side, before);
    }
    let client = side.clients.get(chosen);
    if (!client || client.destroyed || client.closed) client = this.#open(socket, side, chosen);
    return { member: chosen, client };
  }

  /** Connecting to `member` failed on real traffic: it counts against it for every protocol, and it is probed now. */
  connectFailed(member: Member, cause: string): void {
    for (const group of HEALTH_GROUPS) this.#apply(member, group, { ok: false, cause, unreachable: true }, true);
  }

  /** Protocols none of whose servers is healthy, of those asked about. */
  unavailable(services: Iterable<Service>): HealthGroup[] {
    const groups = new Set([...services].map(healthGroupOf));
    return [...groups].filter((g) => !this.members.some((m) => m.up(g)));
  }

  /** Starts the health checks, spread over one interval. A pool without healthCheck never probes. */
  start(): void {
    const hc = this.settings.healthCheck;
    if (!hc) return;
    const total = this.members.length * HEALTH_GROUPS.length;
    this.members.forEach((m, i) =>
      HEALTH_GROUPS.forEach((g, j) => {
        this.#schedule(m, g, firstDelayMs(i * HEALTH_GROUPS.length + j, total, hc.intervalSeconds * 1000));
      }),
    );
  }

  /** Stops the health checks (a reload's new pool starts its own, with the members it kept). */
  stop(): void {
    this.#stopped = true;
    for (const m of this.members) {
      for (const t of m.timers.values()) clearTimeout(t);
      m.timers.clear();
    }
  }

  #schedule(member: Member, group: HealthGroup, delayMs: number): void {
    if (this.#stopped || member.retired) return;
    clearTimeout(member.timers.get(group));
    const timer = setTimeout(() => this.#probe(member, group), delayMs);
    timer.unref();
    member.timers.set(group, timer);
  }

  /** At most one probe per server and protocol is in flight; the next one is scheduled when it ends. */
  #probe(member: Member, group: HealthGroup): void {
    const hc = this.settings.healthCheck;
    if (!hc || this.#stopped) return;
    // One in flight (maybe the previous pool's, just before a reload): this one waits an interval.
    if (member.probing.has(group)) return this.#schedule(member, group, nextDelayMs(hc.intervalSeconds * 1000));
    member.probing.add(group);
    const host = member.server.servername;
    void probeOnce(member.server.origin, member.probeOptions, host, PROBE_PATH[group], hc.timeoutMs).then((result) => {
      member.probing.delete(group);
      if (this.#stopped) return;
      this.#apply(member, group, result, false);
      this.#schedule(member, group, nextDelayMs(hc.intervalSeconds * 1000));
    });
  }

  #apply(member: Member, group: HealthGroup, result: ProbeResult, passive: boolean): void {
    const hc = this.settings.healthCheck;
    const health = member.health.get(group);
    if (!hc || !health) return; // `url` alone: one server, never taken out
    const outFor = Math.round((this.#now() - health.since) / 1000);
    const change = health.record(result.ok, result.cause, hc, this.#now());
    const fields = { server: member.server.key, service: group, ...(passive ? { passive } : {}) };
    if (change === 'out') {
      this.hooks.log?.warn({ ...fields, cause: result.cause }, 'Exchange server out of the pool for this service');
      // A server that stops answering at all fails its connections now; clients reconnect to a healthy one.
      // Deferred: a passive failure is told from inside undici's connect callback, whose request
      // must first fail with the connect error (so forward() fails it over) rather than "destroyed".
      if (result.unreachable) setImmediate(() => [...member.clients].forEach((c) => member.end(c, false)));
    }
    if (change === 'back')
      this.hooks.log?.info?.({ ...fields, outForSeconds: outFor }, 'Exchange server back in the pool');
    if (passive && !result.ok) this.#schedule(member, group, 0);
  }

  #side(socket: Socket): SocketSide {
    let side = this.#sides.get(socket);
    if (!side) {
      const made: SocketSide = { clients: new Map(), bound: new Map() };
      socket.once('close', () => {
        for (const [m, c] of made.clients) m.end(c, false);
      });
      this.#sides.set(socket, made);
      side = made;
    }
    return side;
  }

  #open(socket: Socket, side: SocketSide, member: Member): Client {
    const client = new Client(member.server.origin, member.options);
    client.on('connectionError', () => {}); // reported per request through the handler
    // A new upstream connection is a new NTLM context: the client must authenticate again.
    client.on('disconnect', () => this.hooks.disconnected(socket));
    member.clients.add(client);
    side.clients.set(member, client);
    return client;
  }

  /** The connection leaves `member` for this protocol: closed once no protocol of it uses that server. */
  #release(side: SocketSide, member: Member): void {
    if ([...side.bound.values()].includes(member)) return;
    const client = side.clients.get(member);
    side.clients.delete(member);
    if (client) member.end(client, true); // in-flight requests (long-polls) finish first
  }
}
