"""One HTTP request from a client's namespace to the anycast address, as a user there would make it: a
fresh ``python -c`` inside the namespace (the lab's own process never joins a client's network)."""

from __future__ import annotations

import json
import subprocess
import sys

from lab.run.driver import Driver

_CODE = """
import http.client, json, sys
address, host, path, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
c = http.client.HTTPConnection(address, 80, timeout=timeout)
c.request("GET", path, headers={"Host": host})
r = c.getresponse()
print(json.dumps([r.status, r.getheader("x-anylab-server") or "", r.read().decode(errors="replace")]))
"""


def client_request(lab: Driver, client: str, host: str, path: str = "/",
                   timeout: float = 10.0) -> tuple[int, str, str]:
    """GET ``path`` with ``Host: host`` from ``client`` through anycast, on its own connection: status,
    the server that answered (X-Anylab-Server) and the body. Raises subprocess.CalledProcessError when
    the request itself failed (no connection, no answer within ``timeout``)."""
    address = str(lab.topo.anycast[0].network_address)
    res = subprocess.run(["nsenter", f"--net={lab.netns[client]}", "--", sys.executable, "-c", _CODE, address, host,
                          path, str(timeout)], capture_output=True, text=True, timeout=timeout + 20, check=True)
    status, server, body = json.loads(res.stdout)
    return int(status), str(server), str(body)
