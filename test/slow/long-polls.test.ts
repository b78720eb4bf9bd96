/**
 * The slow tier (`npm run test:slow`, not in `npm test`): each long-poll at its full protocol
 * duration through the gateway, with the gateway's default timeouts.
 *
 * - ActiveSync Ping with the longest heartbeat Exchange accepts, 3540 s (59 min): nothing at all
 *   crosses the wire until the heartbeat ends (MS-ASCMD 2.2.3.88.1).
 * - EWS streaming notifications for 30 minutes, a keep-alive every minute.
 * - MAPI NotificationWait for its 5-minute maximum, PENDING every 30 s (MS-OXCMAPIHTTP 3.2.5.5).
 *
 * They run at the same time, about an hour in all. The file directory stands in for AD here: the
 * directory is not what these tests are about, and a one-hour test should not hold the DC.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { USERS } from '../helpers/ad-fixtures.js';
import { basic, clientFor, EXTERNAL, startHarness, type Harness } from '../helpers/gateway-harness.js';

const MINUTE = 60_000;
let h: Harness;

beforeAll(async () => {
  h = await startHarness({ directory: 'file', standin: { pendingMs: 30_000, notificationWaitMs: 5 * MINUTE } });
});
afterAll(async () => {
  await h?.close();
});

const auth = { host: EXTERNAL, authorization: basic(USERS.alice.sam, USERS.alice.password) };

/** Runs one streaming request; returns when each chunk arrived (ms after start) and what it held. */
async function stream(
  path: string,
  headers: Record<string, string>,
): Promise<{ status: number; headersAt: number; chunks: { at: number; text: string }[] }> {
  const client = clientFor(h);
  const started = Date.now();
  try {
    const res = await client.request({
      path,
      method: 'POST',
      body: 'x',
      headers: { ...auth, ...headers },
      headersTimeout: 0,
      bodyTimeout: 0,
    });
    const headersAt = Date.now() - started;
    const chunks: { at: number; text: string }[] = [];
    for await (const c of res.body) chunks.push({ at: Date.now() - started, text: (c as Buffer).toString('latin1') });
    return { status: res.statusCode, headersAt, chunks };
  } finally {
    await client.close();
  }
}

describe('long-polls at full duration', () => {
  it(
    'carries a 59-minute ActiveSync Ping, an EWS stream of 30 minutes and a 5-minute NotificationWait',
    async () => {
      const [ping, ews, mapi] = await Promise.all([
        stream('/Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=slow1&DeviceType=SmartPhone', {
          'x-standin-heartbeat-ms': String(3540_000),
          'content-type': 'application/vnd.ms-sync.wbxml',
        }),
        stream('/EWS/Exchange.asmx', {
          'x-standin-stream-ms': String(MINUTE),
          'x-standin-stream-count': '30',
          'content-type': 'text/xml',
        }),
        stream('/mapi/emsmdb/?MailboxId=alice@lab.test', {
          'x-requesttype': 'NotificationWait',
          'content-type': 'application/mapi-http',
        }),
      ]);
      console.log(
        JSON.stringify({
          ping: { status: ping.status, headersAtSeconds: ping.headersAt / 1000 },
          ews: { status: ews.status, chunks: ews.chunks.length, lastAtSeconds: (ews.chunks.at(-1)?.at ?? 0) / 1000 },
          mapi: {
            status: mapi.status,
            pending: mapi.chunks.filter((c) => c.text.includes('PENDING')).length,
            doneAtSeconds: (mapi.chunks.find((c) => c.text.includes('DONE'))?.at ?? 0) / 1000,
          },
        }),
      );

      expect(ping.status).toBe(200);
      expect(ping.headersAt).toBeGreaterThanOrEqual(3539_000);

      expect(ews.status).toBe(200);
      expect(ews.chunks.at(-1)!.at).toBeGreaterThanOrEqual(29 * MINUTE);

      expect(mapi.status).toBe(200);
      expect(mapi.chunks.filter((c) => c.text.includes('PENDING')).length).toBeGreaterThanOrEqual(9);
      expect(mapi.chunks.find((c) => c.text.includes('DONE'))!.at).toBeGreaterThanOrEqual(299_000);

      const records = h.access.filter((r) => r.status === 200);
      expect(records.map((r) => r.service).sort()).toEqual(['activesync', 'ews', 'mapi']);
    },
    65 * MINUTE,
  );
});
