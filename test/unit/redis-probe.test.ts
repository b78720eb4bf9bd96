// `exgate check` asks Redis once: with no Sentinel answering it must say so, not wait forever (it hung:
// ioredis kept retrying the Sentinels although the probe had turned its own retries off).
import { describe, expect, it } from 'vitest';
import { probeRedis } from '../../src/state/redis-client.js';

describe('probeRedis', () => {
  it('rejects at once when no Sentinel answers', async () => {
    const settings = {
      url: null,
      sentinels: [{ host: '127.0.0.1', port: 1 }],
      name: 'exgate',
      tls: false,
      ca: undefined,
      password: null,
      keyPrefix: 'exgate:',
      commandTimeoutMs: 1000,
      allowPlaintext: false,
    } as unknown as Parameters<typeof probeRedis>[0];
    // A hang shows as this test's own timeout.
    await expect(probeRedis(settings)).rejects.toThrow(/sentinels are unreachable/i);
  }, 10_000);
});
