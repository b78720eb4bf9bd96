/**
 * `exgate check`'s Redis probe (state.redis): connects as the gateway would (TLS, CA, password, through
 * the Sentinels when named) and says what it found: the server's version and whether it is the master.
 * A replica is a problem: the gateways' scripts write, and a replica refuses writes.
 */
import type { Config } from '../config/load.js';
import { probeRedis } from '../state/redis-client.js';
import type { Locate, UpstreamResult } from './check-upstream.js';

export async function probeState(config: Config, at: Locate): Promise<UpstreamResult> {
  const redis = config.state.redis;
  if (!redis) return { problems: [], note: '' };
  const key = ['state', 'redis', redis.url ? 'url' : 'sentinels'];
  try {
    const { version, role, where } = await probeRedis(redis);
    const note = `Redis ${version} at ${where}, ${role === 'master' ? 'master' : `role ${role}`}`;
    if (role !== 'master') return { problems: [at(key, `${note}: exgate needs the master (it writes)`)], note: '' };
    return { problems: [], note: `${note}, ${config.state.instances} instance(s)` };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return { problems: [at(key, `cannot reach Redis: ${e.code ?? e.name}: ${e.message}`)], note: '' };
  }
}
