import { inject, it } from 'vitest';
import { createServer, type AddressInfo } from 'node:net';
import { Secret } from '../../src/config/yaml.js';
import { LdapDirectory } from '../../src/directory/ldap.js';
import { SERVICE_ACCOUNT, USERS } from '../helpers/ad-fixtures.js';
it('probe', async () => {
  const srv = createServer((s) => {
    s.on('error', () => {});
    let n = 0;
    s.on('data', (buf) => {
      console.log('SERVER got', n, buf.subarray(0, 40).toString('hex'));
      if (n++ > 0) return;
      const at = 2; const id = buf.subarray(at + 2, at + 2 + (buf[at + 1] ?? 1));
      const body = Buffer.from([0x78, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00]);
      const msgId = Buffer.concat([Buffer.from([0x02, id.length]), id]);
      s.write(Buffer.concat([Buffer.from([0x30, msgId.length + body.length]), msgId, body]));
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as AddressInfo).port;
  const mk = (urls: string[], startTls = false) => new LdapDirectory({ type: 'ldap', urls, ca: inject('ldapCaPem'), startTls, bindDn: SERVICE_ACCOUNT.dn,
    bindPassword: new Secret(SERVICE_ACCOUNT.password), baseDn: 'DC=lab,DC=test', netbiosDomain: 'LAB', upnSuffixes: ['lab.test'], connectTimeoutMs: 500, timeoutMs: 500 }, { warn: (o, m) => console.log('WARN', m, JSON.stringify(o)) });
  const d = mk([`ldap://127.0.0.1:${port}`], true);
  const t0 = Date.now();
  const r = await Promise.race([d.findAccount({ kind: 'sam', sam: 'alice', display: 'x' }).then(() => 'ok', (e) => `err ${e}`), new Promise((res) => setTimeout(() => res('hung'), 5000))]);
  console.log('STARTTLS outcome', r, Date.now() - t0);
  const d2 = mk(['ldap://127.0.0.1:1', inject('ldapUrl')]);
  console.log('FAILOVER verify', await d2.verifyPassword({ dn: USERS.alice.dn, sam: 'alice', user: 'LAB\\alice', upn: null, mail: null }, USERS.alice.password).then((x) => JSON.stringify(x), (e) => `err ${e}`));
  await d2.close();
  srv.close();
});
