"""The lab leaves nothing behind: after down, and after its controller was SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from core import netns
from core.records import is_same_process
from core.wait import wait_for
from lab.run.rundir import RUN_ROOT, lab_names, run_dir_of
from tests.conftest import PROJECT, TOPOLOGIES


def anylab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab.cli.main", *args], capture_output=True, text=True,
                          cwd=PROJECT, timeout=300, check=False)


def lab_processes(pids: list[tuple[int, int]]) -> list[int]:
    return [pid for pid, start in pids if is_same_process(pid, start)]


def root_veths() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "veth" in line or "-eth" in line]


def test_sigkilled_controller_is_cleaned_by_down() -> None:
    others = [n for n in lab_names() if n != "thyg"]
    res = anylab("up", str(TOPOLOGIES / "two_pops.yaml"), "--name", "thyg")
    assert res.returncode == 0, res.stdout + res.stderr
    state = json.loads((run_dir_of("thyg") / "state.json").read_text())
    pids = [(int(r["pid"]), int(r["starttime"])) for r in
            map(json.loads, (run_dir_of("thyg") / "pids.jsonl").read_text().splitlines())]
    assert len(lab_processes(pids)) == len(pids) > 0
    os.kill(state["pid"], signal.SIGKILL)
    wait_for(lambda: not is_same_process(state["pid"], state["starttime"]), timeout=10, what="controller death")
    # The daemons outlive their controller until down cleans them up.
    assert lab_processes(pids)
    # `down --all` would also stop labs this test did not start; use it only when there are none.
    res = anylab("down", "--all") if not others else anylab("down", "--name", "thyg")
    assert res.returncode == 0, res.stdout + res.stderr
    assert lab_processes(pids) == []
    assert netns.names("anylab-thyg-") == []
    assert not run_dir_of("thyg").exists()
    assert not list(RUN_ROOT.glob("thyg.*"))
    assert root_veths() == []


def test_bad_topology_starts_nothing(tmp_path: object) -> None:
    before = (lab_names(), netns.names("anylab-"))
    res = anylab("up", str(PROJECT / "tests/unit/malformed/07_unknown_link_router.yaml"), "--name", "tbad")
    assert res.returncode == 2
    assert "links[0].b: unknown router 'r9'" in res.stderr
    assert (lab_names(), netns.names("anylab-")) == before


def test_down_after_down_is_harmless() -> None:
    res = anylab("down", "--name", "tnothing")
    assert res.returncode == 0 and "no lab named" in res.stdout


def test_fault_commands_on_a_lab_that_is_not_up_exit_2() -> None:
    for argv in (["fail", "drain", "sjc"], ["restore", "sjc"], ["measure", "drain", "sjc"]):
        res = anylab(*argv, "--name", "nolab")
        assert res.returncode == 2 and "no lab named 'nolab' is up" in res.stderr, (argv, res.stderr)


def test_ctrl_c_during_measure_restores_the_fault_and_keeps_the_lab() -> None:
    name = "tint"
    assert anylab("up", str(TOPOLOGIES / "two_pops.yaml"), "--name", name).returncode == 0
    try:
        faults = run_dir_of(name) / "faults.json"
        # A shell running this suite in the background ignores SIGINT, and children inherit that: give the
        # measuring process the default disposition a terminal's Ctrl-C would meet.
        proc = subprocess.Popen([sys.executable, "-m", "lab.cli.main", "measure", "server-silent", "sjc",
                                 "--name", name],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=PROJECT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        wait_for(lambda: faults.exists() and "sjc" in faults.read_text(), timeout=60, what="the fault",
                 interval=0.005)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, out
        assert f"lab '{name}' is still up" in out
        assert json.loads(faults.read_text()) == {}
        status = anylab("status", "--json", "--name", name)
        assert json.loads(status.stdout)["phase"] == "up" and json.loads(status.stdout)["faults"] == {}
    finally:
        assert anylab("down", "--name", name).returncode == 0


def test_a_sigkilled_measure_takes_its_load_with_it_and_down_leaves_nothing() -> None:
    """Issue 20: the HTTP users `measure --http` starts are recorded and die with it; before, a SIGKILLed
    measure left them running, unrecorded, for their whole run."""
    from core.proc import recorded_procs

    name = "tkill"
    assert anylab("up", str(TOPOLOGIES / "two_pops.yaml"), "--name", name).returncode == 0
    try:
        proc = subprocess.Popen([sys.executable, "-m", "lab.cli.main", "measure", "server-silent", "sjc", "--http",
                                 "--name", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=PROJECT)
        loads = wait_for(lambda: [p for p in recorded_procs(run_dir_of(name)) if p.name == "http-load"], timeout=60,
                         what="the HTTP users to be recorded", interval=0.05)
        proc.kill()
        proc.wait()
        wait_for(lambda: not any(p.alive() for p in loads), timeout=5.0, what="the HTTP users to die with measure")
    finally:
        assert anylab("down", "--name", name).returncode == 0
    assert netns.names(f"anylab-{name}-") == [] and not run_dir_of(name).exists()
