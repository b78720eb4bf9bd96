# Opens impacket's RPC over HTTP v2 channels (ncacn_http, MS-RPCH 3.2.1.5.3.1) through a proxy URL, as
# impacket's own client does: an NTLM probe, then Basic when only Basic is offered, each channel with
# `Expect: 100-continue`. On each channel it records the first response impacket read (which must be
# 100 Continue), then writes impacket's own CONN/B1 (IN) or CONN/A1 (OUT) PDU and prints one JSON line.
# usage: python3 impacket-rpch.py PROXY_URL USER PASSWORD DOMAIN
import json, socket, sys
from impacket.dcerpc.v5 import rpch, transport

socket.setdefaulttimeout(10)
url, user, password, domain = sys.argv[1:5]
interim = {}

def read_100_continue(self, method):
    sock = self._RPCProxyClient__channels[method].sock
    resp = b''
    while b'\r\n\r\n' not in resp:
        chunk = sock.recv(8192)
        if not chunk:
            break
        resp += chunk
    interim[method] = resp.decode('latin1')
    if resp[9:23] != b'100 Continue\r\n':
        first = resp.split(b'\r\n')[0].decode('latin1')
        raise rpch.RPCProxyClientException('no 100 Continue on ' + method, proxy_error=first)

rpch.RPCProxyClient._read_100_continue = read_100_continue
t = transport.DCERPCTransportFactory('ncacn_http:exchange-be.lab.test[6001]')
t.set_rpc_proxy_url(url)
t.set_credentials(user, password, domain)
out = {'interim': interim}
try:
    t.create_rpc_in_channel()
    t.create_rpc_out_channel()
    a1 = rpch.hCONN_A1(b'\x11' * 16, b'\x22' * 16, 262144)
    b1 = rpch.hCONN_B1(b'\x11' * 16, b'\x33' * 16, b'\x44' * 16)
    t.get_socket_out().sendall(a1)
    t.get_socket_in().sendall(b1)
    out.update(auth=t.get_auth_type(), sentIn=b1.hex(), sentOut=a1.hex())
except Exception as e:
    out['error'] = '%s: %s' % (type(e).__name__, e)
print(json.dumps(out))
