"""What drives a running lab, in this process or in another one.

:class:`Driver` is what a measurement, an overload run or a nemesis needs of a lab; a
:class:`lab.run.lab.Lab` in this process (tests, benchmarks) is one, and so is :class:`RemoteLab`, a lab
run by its controller (``anylab up``) and driven through the controller's socket (the CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from control_plane.client import Client
from core.errors import UsageError
from lab.run import controller_socket as control
from lab.run.observe import observed_catchment
from lab.run.rundir import control_plane_dirs, read_state, run_dir_of, topology_of
from model.topology import Topology


class Driver(Protocol):
    """A running lab as experiments see it: its topology, namespaces and directories; faults in and
    out; the catchment; deploying a worker."""

    topo: Topology
    netns: dict[str, str]
    run_dir: Path

    def node_dir(self, node: str) -> Path: ...

    def catchment(self, after: float | None = None) -> dict[str, str | None]: ...

    def deploy(self, name: str, host: str, code: str, **options: Any) -> Any: ...

    def fail(self, scenario: str, target: str, count: int = 3, period: float = 1.0) -> float: ...

    def restore(self, target: str) -> float: ...


class RemoteLab:
    """A lab run by its controller (``anylab up``), driven through the control socket."""

    def __init__(self, name: str) -> None:
        state = read_state(name)
        if state is None or state.get("phase") != "up":
            raise UsageError(f"no lab named '{name}' is up; 'anylab up' starts one")
        self.name = name
        self.topo = topology_of(state)
        self.run_dir = run_dir_of(name)
        self.netns = {n: f"/run/netns/{state['netns_prefix']}{n}" for n in self.topo.node_names()}

    def fail(self, scenario: str, target: str, count: int = 3, period: float = 1.0) -> float:
        timeout = 60.0 + count * period
        reply = control.call(self.run_dir, "fail", timeout, scenario=scenario, target=target, count=count,
                             period=period)
        return float(reply["t"])

    def restore(self, target: str) -> float:
        return float(control.call(self.run_dir, "restore", target=target)["t"])

    def node_dir(self, node: str) -> Path:
        return self.run_dir / node

    def catchment(self, after: float | None = None) -> dict[str, str | None]:
        return observed_catchment(self.topo, self.run_dir, after)

    def deploy(self, name: str, host: str, code: str, **options: Any) -> Any:
        """Upload and deploy a worker everywhere through the control plane and wait until every PoP
        server runs it. Raises ControlPlaneError, WaitTimeout."""
        return Client(control_plane_dirs(self.topo, self.run_dir)).release(name, {"code": code, "host": host,
                                                                             **options})
