"""The operator's side of the control plane API, over the regions' Unix sockets in the lab's run directory.

Used by ``anylab deploy|deployments|rollback`` and :meth:`lab.run.lab.Lab.deploy`. A client holds every
region's directory, nearest first, and uses the first region that answers: a region whose API is down
(nothing answers on its socket) or without an etcd quorum (503) is passed over for the next. A write
carries a request id (``X-Anylab-Request``), the same in every region it is sent to, so that one
committed by a region that then failed to answer is not done twice. Every call returns the decoded
JSON reply or raises :class:`ControlPlaneError` with the API's reason (``status`` set) or, when no
region answers, a message that says the control plane is down and what still works.
"""

from __future__ import annotations

import http.client
import json
import secrets
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import unix_http
from core.errors import AnylabError
from core.wait import wait_for

SOCKET = "api.sock"
#: How long a write waits for its region before it is sent to the next one as well: far above a deploy's
#: usual answer (tens of ms), below the second a cut-off region takes to know it.
HEDGE_S = 0.5
#: The API replicas' sockets (scaling): ``api-1.sock``, ``api-2.sock``…
REPLICA_SOCKETS = "api-*.sock"
ADMIN_TOKEN = "admin.token"


@dataclass(frozen=True)
class Deployed:
    """A deploy or rollback as carried out: the version (None after a rollback), whether the upload was
    new, PoP → version, server → seconds from the API's commit to that server running it, and the
    commit's time (the API's CLOCK_MONOTONIC ``t``)."""

    name: str
    version: str | None
    placement: dict[str, str]
    propagation: dict[str, float]
    new: bool = False
    t: float = 0.0


class ControlPlaneError(AnylabError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message, node="control", daemon="control-plane")
        self.status = status


class Client:
    """``Client([run_dir / "cp-eu", run_dir / "cp-na", …])``: the regions' directories (each holding
    ``api.sock`` and the admin token), nearest first; one directory is a one-region client."""

    def __init__(self, directories: Path | Sequence[Path], token: str | None = None, timeout: float = 30.0) -> None:
        self.directories = [directories] if isinstance(directories, Path) else list(directories)
        if not self.directories:
            raise ValueError("no control plane directory given")
        self.timeout = timeout
        self._token = token
        #: The region directory that answered last.
        self.used: Path | None = None

    @property
    def directory(self) -> Path:
        return self.directories[0]

    @property
    def token(self) -> str:
        if self._token is None:
            try:
                self._token = (self.directory / ADMIN_TOKEN).read_text().strip()
            except OSError as exc:
                raise ControlPlaneError(f"no admin token in {self.directory} ({exc.strerror}); "
                                        "is the lab up?") from None
        return self._token

    def call_one(self, directory: Path, method: str, path: str, body: Any = None,
                 request_id: str | None = None, socket: str = SOCKET) -> Any:
        """One call to one region (its API's ``socket``: a replica's is ``api-N.sock``); raises
        ControlPlaneError (``status`` None: nothing answered)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        if request_id is not None:
            headers["X-Anylab-Request"] = request_id
        try:
            status, raw = unix_http.request(str(directory / socket), method, path, data, headers, self.timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise ControlPlaneError(f"{directory.name}: nothing answers on {directory / socket} ({exc})") from None
        try:
            reply = json.loads(raw) if raw else {}
        except ValueError:
            reply = {"error": raw.decode(errors="replace")}
        if status >= 400:
            raise ControlPlaneError(f"{method} {path}: {status} {reply.get('error', '')}".strip(), status)
        return reply

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The call, to the nearest region that answers (see the module docstring). A write still
        unanswered after :data:`HEDGE_S` is sent, with the same request id, to the next region too, and
        the first answer wins: a region cut off from etcd's majority does not know it for up to a second
        and holds a write until its etcd deadline, and the id makes sure only one of them is done."""
        request_id = secrets.token_urlsafe(12) if method == "POST" else None
        errors: list[str] = []
        refused = False
        pool = ThreadPoolExecutor(max_workers=len(self.directories), thread_name_prefix="cp-call")
        futures: dict[Future[Any], Path] = {}
        waiting = list(self.directories)

        def send() -> None:
            directory = waiting.pop(0)
            futures[pool.submit(self.call_one, directory, method, path, body, request_id)] = directory

        try:
            send()
            while futures:
                hedge = HEDGE_S if request_id is not None and waiting else None
                done, _ = wait(futures, timeout=hedge, return_when=FIRST_COMPLETED)
                if not done:
                    send()  # the nearest is slow to answer: ask the next one as well
                    continue
                for future in done:
                    directory = futures.pop(future)
                    try:
                        reply = future.result()
                    except ControlPlaneError as exc:
                        if exc.status not in (None, 503):
                            raise
                        refused |= exc.status == 503
                        errors.append(str(exc))
                        if waiting and not futures:
                            send()
                        continue
                    self.used = directory
                    return reply
        finally:
            pool.shutdown(wait=False)  # a region still holding a write answers it to nobody
        if refused:  # a region answered but could not do it (no etcd quorum, an artifact short of copies)
            raise ControlPlaneError("no region of the control plane could do it: " + "; ".join(errors), 503)
        raise ControlPlaneError(
            f"no region of the control plane answers ({'; '.join(errors)}); it is down: deployed "
            "workers keep serving from the PoPs' last good versions, but nothing can be deployed or rolled "
            "back until it is back ('anylab restore control')")

    def each(self, method: str, path: str, replicas: bool = False) -> dict[str, Any]:
        """The same read from every region: directory name → its reply (regions that do not answer left
        out); with ``replicas`` also from every API replica, as ``NAME/api-N``."""
        out = {}
        for directory in self.directories:
            sockets = [SOCKET, *(sorted(p.name for p in directory.glob(REPLICA_SOCKETS)) if replicas else ())]
            for socket in sockets:
                name = directory.name if socket == SOCKET else f"{directory.name}/{socket.removesuffix('.sock')}"
                try:
                    out[name] = self.call_one(directory, method, path, socket=socket)
                except ControlPlaneError:
                    continue
        return out

    def upload(self, name: str, upload: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", f"/v1/workers/{name}", upload)
        return result

    def deploy(self, name: str, version: str, pops: list[str] | None = None,
               regions: list[str] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", f"/v1/deployments/{name}",
                                           {"version": version, "pops": pops or [], "regions": regions or []})
        return result

    def rollback(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", f"/v1/deployments/{name}/rollback")
        return result

    def set_servers(self, pop: str, servers: list[str]) -> None:
        """The PoP's servers in service from now on (what deploys wait for). Raises ControlPlaneError."""
        self.call("POST", f"/v1/pops/{pop}/servers", {"servers": servers})

    def deployments(self) -> dict[str, Any]:
        """The placements from the nearest serving region, and what every PoP server last reported to any
        region (the latest report of each: a server syncs with one region at a time)."""
        replies = self.each("GET", "/v1/deployments", replicas=True)
        if not any("/" not in name for name in replies):
            self.call("GET", "/v1/deployments")  # raises the "no region answers" error
        serving = [r for r in replies.values() if r.get("serving")] or list(replies.values())
        result: dict[str, Any] = dict(serving[0])
        servers: dict[str, Any] = {}
        for region, reply in replies.items():
            for name, info in reply["servers"].items():
                if name not in servers or info["t_seen"] > servers[name]["t_seen"]:
                    servers[name] = {**info, "via": region}
        result["servers"] = dict(sorted(servers.items()))
        return result

    def wait_applied(self, name: str, placement: dict[str, str], t: float, timeout: float = 30.0) -> dict[str, float]:
        """Wait until every PoP server reports running what ``placement`` says for worker ``name``
        (servers of PoPs outside it: not running it); returns server → propagation seconds after ``t``
        (0 for a server that already ran it). Raises WaitTimeout naming the servers behind and why."""
        behind: list[str] = []
        result: dict[str, float] = {}

        def done() -> bool:
            listing = self.deployments()
            behind.clear()
            for pop, info in listing["pops"].items():
                want = placement.get(pop)
                for server in info["servers"]:
                    got = listing["servers"].get(server, {})
                    if got.get("applied", {}).get(name) != want:
                        heard = (f"last heard {listing['t'] - got['t_seen']:.1f} s ago" if got else "never heard from")
                        behind.append(f"{server} ({got.get('error') or heard})")
                    else:
                        t_applied = got.get("t_applied")
                        result[server] = max(0.0, t_applied - t) if t_applied else 0.0
            return not behind

        wait_for(done, timeout=timeout, what=f"worker {name} on every PoP server", interval=0.02,
                 describe=lambda: "behind: " + ", ".join(behind[:8]) + "; the deploy is recorded: servers take "
                 "it when they reach the control plane ('anylab deployments')")
        return result

    def release(self, name: str, upload: dict[str, Any], pops: list[str] | None = None,
                regions: list[str] | None = None, timeout: float = 30.0) -> Deployed:
        """Upload, deploy (to ``pops``/``regions``, else every PoP) and wait until every PoP server runs
        it. Raises ControlPlaneError (the API's reason, or the control plane down), WaitTimeout."""
        uploaded = self.upload(name, upload)
        reply = self.deploy(name, uploaded["version"], pops, regions)
        propagation = self.wait_applied(name, reply["placement"], reply["t"], timeout)
        return Deployed(name, uploaded["version"], reply["placement"], propagation, bool(uploaded["new"]),
                        float(reply["t"]))

    def roll_back(self, name: str, timeout: float = 30.0) -> Deployed:
        """Roll back and wait until every PoP server runs the placement before; raises as ``release``."""
        reply = self.rollback(name)
        propagation = self.wait_applied(name, reply["placement"], reply["t"], timeout)
        return Deployed(name, None, reply["placement"], propagation, t=float(reply["t"]))
