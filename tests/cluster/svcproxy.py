"""A Service's virtual IP, as kube-proxy's (former) userspace mode did it: one listener per
ClusterIP:port, each connection forwarded to one ready endpoint (round robin; one that does not
answer in time is passed over for the next, with kube-proxy's dial timeouts). No ready
endpoint: the listener is closed, so a client gets "connection refused" as with kube-proxy's
REJECT rule. Runs inside the Services' network namespace; the endpoints come from a JSON file
that the test's endpoints controller rewrites:
    {"198.18.0.200:80": [["198.18.0.12", 8080]], ...}
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError):
            pass


DIAL_TIMEOUTS_S = (0.25, 0.5, 1.0, 2.0)  # EndpointDialTimeouts


class Proxy:
    def __init__(self, path: str):
        self.path = path
        self.endpoints: dict[str, list] = {}
        self.servers: dict[str, asyncio.AbstractServer] = {}
        self.turn = itertools.count()
        self.mtime = None

    async def handle(self, vip: str, reader, writer):
        candidates = self.endpoints.get(vip) or []
        if not candidates:
            writer.close()
            return
        # kube-proxy's userspace mode (Kubernetes v1.25 pkg/proxy/userspace/proxysocket.go,
        # TryConnectEndpoints): each try dials the next endpoint, with the timeouts of
        # EndpointDialTimeouts, so an endpoint whose host is gone (not yet out of the list) costs
        # a quarter of a second, not the connection.
        for timeout in DIAL_TIMEOUTS_S:
            ip, port = candidates[next(self.turn) % len(candidates)]
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout)
                break
            except (TimeoutError, OSError):
                continue
        else:
            writer.transport.abort()  # the client sees a reset, as with no endpoint that answers
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def sync(self):
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self.mtime:
            return
        self.mtime = mtime
        with open(self.path) as f:
            self.endpoints = json.load(f)
        for vip, eps in self.endpoints.items():
            if eps and vip not in self.servers:
                host, port = vip.rsplit(":", 1)
                self.servers[vip] = await asyncio.start_server(
                    lambda r, w, vip=vip: self.handle(vip, r, w), host, int(port), reuse_address=True
                )
            elif not eps and vip in self.servers:
                self.servers.pop(vip).close()
        for vip in list(self.servers):
            if vip not in self.endpoints:
                self.servers.pop(vip).close()

    async def run(self):
        print("svcproxy: ready", flush=True)
        while True:
            await self.sync()
            await asyncio.sleep(0.2)


if __name__ == "__main__":
    asyncio.run(Proxy(sys.argv[1]).run())
