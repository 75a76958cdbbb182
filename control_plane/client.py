"""The operator's side of the control plane API, over the Unix socket in the lab's run directory.

Used by ``anylab deploy|deployments|rollback`` and :meth:`lab.run.lab.Lab.deploy`. Every call returns
the decoded JSON reply or raises :class:`ControlPlaneError` with the API's reason (``status`` set) or,
when nothing answers, a message that says the control plane is down and what still works.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import unix_http
from core.errors import AnylabError
from core.wait import wait_for

SOCKET = "api.sock"
ADMIN_TOKEN = "admin.token"


@dataclass(frozen=True)
class Deployed:
    """A deploy or rollback as carried out: the version (None after a rollback), whether the upload was
    new, PoP → version, and server → seconds from the API's commit to that server running it."""

    name: str
    version: str | None
    placement: dict[str, str]
    propagation: dict[str, float]
    new: bool = False


class ControlPlaneError(AnylabError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message, node="control", daemon="control-plane")
        self.status = status


class Client:
    """``Client(run_dir / "control")``: the directory holding ``api.sock`` and the admin token."""

    def __init__(self, directory: Path, token: str | None = None, timeout: float = 30.0) -> None:
        self.directory = directory
        self.timeout = timeout
        self._token = token

    @property
    def token(self) -> str:
        if self._token is None:
            try:
                self._token = (self.directory / ADMIN_TOKEN).read_text().strip()
            except OSError as exc:
                raise ControlPlaneError(f"no admin token in {self.directory} ({exc.strerror}); "
                                        "is the lab up?") from None
        return self._token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        try:
            status, raw = unix_http.request(str(self.directory / SOCKET), method, path, data, headers, self.timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise ControlPlaneError(
                f"the control plane does not answer on {self.directory / SOCKET} ({exc}); it is down: deployed "
                "workers keep serving from the PoPs' last good versions, but nothing can be deployed or rolled "
                "back until it is back ('anylab restore control')") from None
        try:
            reply = json.loads(raw) if raw else {}
        except ValueError:
            reply = {"error": raw.decode(errors="replace")}
        if status >= 400:
            raise ControlPlaneError(f"{method} {path}: {status} {reply.get('error', '')}".strip(), status)
        return reply

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
        result: dict[str, Any] = self.call("GET", "/v1/deployments")
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
        return Deployed(name, uploaded["version"], reply["placement"], propagation, bool(uploaded["new"]))

    def roll_back(self, name: str, timeout: float = 30.0) -> Deployed:
        """Roll back and wait until every PoP server runs the placement before; raises as ``release``."""
        reply = self.rollback(name)
        propagation = self.wait_applied(name, reply["placement"], reply["t"], timeout)
        return Deployed(name, None, reply["placement"], propagation)
