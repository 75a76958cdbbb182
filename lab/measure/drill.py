"""The design's runbook for a complete region failure, run end to end with no human step, timed
(``anylab drill region-down REGION``).

The fault is ``region-loss``: the region's PoP servers, storage node (KV master, DO host) and control
plane node go silent; its routers and users stay (their traffic must go elsewhere). Then, each step on the
one CLOCK_MONOTONIC clock, relative to the fault:

1. **Detection**: the ``RegionDown`` alert reaches the lab's receiver (Prometheus → Alertmanager).
2. **Containment**: every PoP of the region drained (withdrawn from BGP, and kept so when its servers
   return), the region withdrawn from DNS and deployments to it halted (control plane), the status page
   says so; then every client of the region served by another region's PoP (the probes).
3. **Recovery**: the DO directory moved every object the region owned (promoted in its backup region);
   integrity verified: the surviving KV masters hold the same data (digests equal).
4. **Restoration**: the region back on *replacement* storage — its KV master's disk deleted before it
   starts, then the KV data restored from the backups (:mod:`backup.service`) until it holds every key
   the surviving masters held — then re-added: undrained, back in DNS, deployments resumed, the status page operational,
   every client on its predicted PoP again.
5. **Post-incident**: the report (:func:`report`), Markdown and JSON: every step's time, RTO per phase
   and end to end, RPO per data class (KV: acknowledged writes lost; Durable Objects: acknowledged changes
   lost and the history's linearizability; control plane: deploys lost), the alerts that fired.

Workloads during the drill, all bounded: a KV writer at a PoP of the region (its writes are what the
region's master acknowledged), Jepsen-style DO clients in every client namespace (:mod:`lab.load.do_load`),
and a deploy made before the fault (it must survive) and one made during the containment (it must not
reach the halted region).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control_plane.client import Client
from core.clock import monotonic
from core.errors import AnylabError, UsageError
from core.files import read_jsonl
from core.wait import wait_for
from durable import client as do_client
from kv.client import KvClient
from kv.store import KvError
from lab.load.do_nemesis import Nemesis, NemesisSpec
from lab.record import status_page
from lab.record.analysis import client_result
from lab.record.probes import read_probes
from lab.run.driver import Driver
from lab.run.monitoring import alerts
from lab.run.rundir import control_plane_dirs
from model.constants import BACKUP_SOCKET
from model.graph import predict_catchment

NS = "drill"
#: The KV writer's pace (a write every 0.1 s) and its bound.
WRITE_EVERY_S = 0.1
MAX_WRITES = 5000
#: What a phase may take before the drill gives up on it (the design's window for a region is 5 min).
PHASE_TIMEOUT_S = 120.0
#: A worker deployed before the fault and again during the containment (the halt must hold).
PROBE_WORKER = "drillw"


def probe_code(n: int) -> str:
    return f"async def fetch(request, env, ctx):\n    return 'drill v{n}'\n"


@dataclass
class Timeline:
    """Each step's time (CLOCK_MONOTONIC) by name, in order."""

    t0: float = 0.0
    events: list[tuple[str, float, str]] = field(default_factory=list)

    def add(self, name: str, t: float, detail: str = "") -> float:
        """Record step ``name`` at ``t`` (which may be earlier than steps already there: kept in time order)."""
        bisect.insort(self.events, (name, t, detail), key=lambda e: e[1])
        return t

    def mark(self, name: str, detail: str = "") -> float:
        return self.add(name, monotonic(), detail)

    def rel(self) -> list[dict[str, Any]]:
        return [{"event": n, "t_s": round(t - self.t0, 3), "detail": d} for n, t, d in self.events]


class KvWriter:
    """Writes d0, d1, … through one PoP server's KV replica every WRITE_EVERY_S until stopped, keeping
    the keys whose write its master acknowledged (committed)."""

    def __init__(self, socket: Path) -> None:
        self.client = KvClient(socket, timeout=5)
        self.acked: set[str] = set()
        self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        for i in range(MAX_WRITES):
            if self.stop.is_set():
                return
            try:
                if self.client.put(NS, f"d{i}", str(i).encode()).get("committed"):
                    self.acked.add(f"d{i}")
            except (KvError, OSError):
                self.failed += 1
            self.stop.wait(WRITE_EVERY_S)  # the writer's pace, not a wait for a state


def live_keys(client: KvClient, prefix: str = "") -> Iterator[str]:
    """Every live key of namespace NS with ``prefix`` at a KV node, page by page."""
    cursor = None
    while True:
        page = client.list(NS, prefix, 1000, cursor)
        yield from (k["name"] for k in page["keys"])
        if page["list_complete"]:
            return
        cursor = page["cursor"]


def kv_digest(socket: Path) -> str:
    """A hash of every live key and value of namespace NS at a KV master (its operator socket)."""
    client = KvClient(socket, timeout=10)
    h = hashlib.sha256()
    for key in live_keys(client):
        got = client.get(NS, key)
        h.update(json.dumps([key, None if got is None else got["value"].decode(errors="replace")]).encode())
    return h.hexdigest()


def check_drillable(driver: Driver, region: str) -> None:
    """Raises UsageError unless the lab can run the drill on ``region``: monitoring and backups on, the
    region a serving region with a KV master, and not the one holding the DO directory, monitoring or
    the backup store (losing those is the ``catastrophic`` scenario, not this runbook)."""
    topo = driver.topo
    if topo.monitoring is None or topo.backup is None:
        raise UsageError(f"topology {topo.name} needs 'monitoring' and 'backup' sections for a drill")
    regions = sorted({p.region for p in topo.pops})
    if region not in regions:
        raise UsageError(f"unknown region '{region}'; regions with PoPs: {', '.join(regions)}")
    if region not in {k.region for k in topo.kv_masters}:
        raise UsageError(f"region '{region}' has no KV master to restore")
    held = {topo.control.region: "the DO directory", topo.monitoring.region: "monitoring",
            topo.backup.region: "the backup store"}
    if region in held:
        others = [r for r in regions if r not in held and r in {k.region for k in topo.kv_masters}]
        raise UsageError(f"region '{region}' holds {held[region]}; drill another region ({', '.join(others)})")


class Drill:
    """One run of the runbook on ``region`` of a running lab (``driver``)."""

    def __init__(self, driver: Driver, region: str, do_spec: NemesisSpec | None = None) -> None:
        check_drillable(driver, region)
        self.driver, self.region, self.topo = driver, region, driver.topo
        self.pops = [p.name for p in self.topo.pops if p.region == region]
        self.clients = [c.name for c in self.topo.clients if c.region == region]
        self.master = self.topo.kv_master_of(region).name
        self.others = [k.name for k in self.topo.kv_masters if k.region != region]
        self.control = Client(control_plane_dirs(self.topo, driver.run_dir))
        assert self.topo.monitoring is not None and self.topo.backup is not None
        self.mon_dir = driver.node_dir(self.topo.monitoring.name)
        self.backup = KvClient(driver.node_dir(self.topo.backup.name) / BACKUP_SOCKET, timeout=120)
        self.nemesis = Nemesis(driver, do_spec or NemesisSpec(failovers=1, procs=1, rate=5.0, registers=3,
                                                               counters=3))
        self.timeline = Timeline()
        self.regions = [r.name for r in self.topo.spec.regions]

    def publish(self, status: str, regions: dict[str, str], message: str) -> float:
        return status_page.publish(self.mon_dir / "status.json", status, {**dict.fromkeys(self.regions, "operational"),
                                                                          **regions}, message)

    def socket(self, master: str) -> Path:
        return self.driver.node_dir(master) / "kv.sock"

    def wait(self, probe: Any, what: str) -> Any:
        return wait_for(probe, timeout=PHASE_TIMEOUT_S, what=what, interval=0.1)

    def run(self) -> dict[str, Any]:
        """The runbook, end to end; the report. Raises WaitTimeout/AnylabError when a step does not come;
        the fault and the containment are undone and the workloads stopped anyway."""
        topo, tl = self.topo, self.timeline
        # Before: the DO example worker (its objects spread over the regions), a deploy that must survive.
        self.nemesis.deploy()
        self.driver.deploy(PROBE_WORKER, f"{PROBE_WORKER}.example", probe_code(1))
        before_deploys = self.control.deployments()["workers"]
        self.nemesis.start_load(3 * PHASE_TIMEOUT_S)
        writer = KvWriter(self.driver.node_dir(self.topo.pop(self.pops[0]).servers[0]) / "kv.sock")
        writer.thread.start()
        drained: list[str] = []
        contained = False
        faulted = False
        try:
            self.nemesis.wait_served(monotonic())
            self.wait(lambda: len(writer.acked) >= 10, "the KV writer's first acknowledged writes")
            owned = [k for k, o in do_client.directory(self.nemesis.control_dir)["objects"].items()
                     if o["owner"] == self.region and k in self.nemesis.keys]
            tl.t0 = self.driver.fail("region-loss", self.region)
            faulted = True
            tl.add("fault", tl.t0, f"region-loss {self.region}")
            records = self.mon_dir / "alerts.jsonl"
            self.wait(lambda: any(a.name == "RegionDown" and a.subject == self.region and a.status == "firing"
                                  and a.t >= tl.t0 for a in alerts(records)), "the RegionDown alert")
            tl.mark("detection", "RegionDown received")
            # Containment.
            contained = True
            for pop in self.pops:
                self.driver.fail("drain", pop)
                drained.append(pop)
            tl.mark("withdrawn_bgp", ", ".join(self.pops) + " drained")
            self.control.call("POST", f"/v1/dns/regions/{self.region}", {"withdrawn": True})
            tl.mark("withdrawn_dns")
            self.control.call("POST", f"/v1/regions/{self.region}/halt", {"halted": True})
            tl.mark("deploys_halted")
            self.publish("major_outage", {self.region: "major_outage"},
                         f"{self.region} is down; its users are served from other regions")
            tl.mark("status_page", "major_outage")
            interval = 1.0 / topo.spec.settings.probe_rate_hz
            shifts: dict[str, float] = {}

            def shifted() -> bool:
                for c in self.clients:
                    r = client_result(read_probes(self.driver.node_dir(c) / "probes.jsonl"), tl.t0, interval, by="pop")
                    if r.shift_s is not None:
                        shifts[c] = r.shift_s
                return len(shifts) == len(self.clients)

            self.wait(shifted, "every client of the region served by another region")
            tl.add("traffic_shifted", tl.t0 + max(shifts.values(), default=0.0),
                   ", ".join(f"{c} {s:.2f} s" for c, s in sorted(shifts.items())))
            upload = {"code": probe_code(2), "host": f"{PROBE_WORKER}.example"}
            v2 = self.control.upload(PROBE_WORKER, upload)["version"]
            placement = self.control.deploy(PROBE_WORKER, v2)["placement"]
            was = before_deploys[PROBE_WORKER]["placement"]
            halted_ok = all(placement[p] == (was[p] if p in self.pops else v2) for p in placement)
            verdict = "halted region left alone" if halted_ok else "REACHED the halted region"
            tl.mark("deploy_during_containment", f"{PROBE_WORKER} {v2}: {verdict}")
            tl.mark("contained")
            # Recovery.

            def migrated() -> bool:
                objects = do_client.directory(self.nemesis.control_dir)["objects"]
                return all(objects[k]["owner"] != self.region for k in owned if k in objects)

            self.wait(migrated, "the region's Durable Objects to move")
            # When the directory failed the region over, from its own log (not when this loop looked).
            events = read_jsonl(self.nemesis.control_dir / "do-events.jsonl")
            down = [float(e["time"]) for e in events if e.get("event") == "region_down"
                    and e.get("region") == self.region and float(e["time"]) >= tl.t0]
            tl.add("do_migrated", min(down, default=monotonic()), f"{len(owned)} of this run's objects")
            self.wait(lambda: len({kv_digest(self.socket(m)) for m in self.others}) == 1,
                      "the surviving KV masters to agree")
            tl.mark("integrity_verified", "surviving KV masters' digests equal")
            # Restoration: replacement storage, data from the backups, then re-added.
            self.driver.restore(self.region)
            faulted = False
            self.driver.fail("kv-master-wipe", self.master)
            self.driver.restore(self.master)
            tl.mark("replaced", f"{self.master} back with an empty disk")
            # What the surviving masters hold now (the writer, at the region's PoP, writes on meanwhile: a
            # digest of a moving state would never settle).
            held = self.keys_at(self.others[0])
            restored = self.backup.call("POST", "/v1/restore/kv", {"at": None})
            self.wait(lambda: held <= self.keys_at(self.master), "the restored master to hold what the others held")
            tl.mark("data_restored", f"snapshot {restored.get('snapshot')} + {restored.get('wal_replayed')} WAL "
                                     "records")
            self.control.call("POST", f"/v1/regions/{self.region}/halt", {"halted": False})
            self.control.call("POST", f"/v1/dns/regions/{self.region}", {"withdrawn": False})
            for pop in drained:
                self.driver.restore(pop)
            drained.clear()
            contained = False
            do_client.wait_leases(self.nemesis.control_dir, PHASE_TIMEOUT_S)  # its DO host renews again
            predicted = predict_catchment(topo)
            t_readd = tl.mark("readded", "undrained, back in DNS, deployments resumed")
            self.wait(lambda: self.driver.catchment(after=t_readd) == predicted, "every client on its predicted PoP")
            self.publish("operational", {}, f"{self.region} restored")
            tl.mark("restored", "catchment as predicted; status page operational")
        finally:
            writer.stop.set()
            writer.thread.join(10)
            self.nemesis.stop_load()
            if faulted:
                self.driver.restore(self.region)
            for pop in drained:
                self.driver.restore(pop)
            if contained:
                self.control.call("POST", f"/v1/regions/{self.region}/halt", {"halted": False})
                self.control.call("POST", f"/v1/dns/regions/{self.region}", {"withdrawn": False})
        do = self.do_verdict()
        tl.mark("post_incident")
        after_deploys = self.control.deployments()["workers"]
        kv_have = {m: self.keys_at(m) for m in (self.master, *self.others)}
        return self.summarise(writer, kv_have, before_deploys, after_deploys, do, halted_ok, restored, records)

    def keys_at(self, master: str) -> set[str]:
        """The writer's keys a master holds."""
        return set(live_keys(KvClient(self.socket(master), timeout=10), "d"))

    def do_verdict(self) -> dict[str, Any]:
        """One final read of every object, then the whole DO history checked (as the DO nemesis does)."""
        self.nemesis.final_reads()
        return self.nemesis.summary([])

    def summarise(self, writer: KvWriter, kv_have: dict[str, set[str]], before: dict[str, Any],
                  after: dict[str, Any], do: dict[str, Any], halted_ok: bool, restored: dict[str, Any],
                  records: Path) -> dict[str, Any]:
        tl = self.timeline
        t = {n: tm - tl.t0 for n, tm, _ in tl.events}
        lost_kv = {m: len(writer.acked - have) for m, have in kv_have.items()}
        deploys_lost = sorted(name for name, info in before.items()
                              if after.get(name, {}).get("deploys", 0) < info["deploys"])
        fired = [{"alert": a.name, "subject": a.subject, "phase": a.phase, "status": a.status,
                  "t_s": round(a.t - tl.t0, 3)} for a in alerts(records) if a.t >= tl.t0]
        phases = {"detection": t["detection"], "containment": t["contained"] - t["detection"],
                  "recovery": t["integrity_verified"] - t["contained"],
                  "restoration": t["restored"] - t["integrity_verified"]}
        return {
            "region": self.region, "pops": self.pops, "clients": self.clients,
            "timeline": tl.rel(),
            "rto_s": {"traffic_shifted": round(t["traffic_shifted"], 3), "do_migrated": round(t["do_migrated"], 3),
                      "region_restored": round(t["restored"], 3),
                      "phases": {k: round(v, 3) for k, v in phases.items()}},
            "rpo": {"kv": {"acked_writes": len(writer.acked), "lost_by_master": lost_kv,
                           "failed_writes": writer.failed, "restore": restored},
                    "do": {"acked_lost": do["acked_lost"], "linearizable": do["linearizable"], "ops": do["ops"],
                           "verdicts": do["verdicts"]},
                    "control": {"deploys_lost": deploys_lost, "halt_held": halted_ok}},
            "alerts": fired,
        }


def report(result: dict[str, Any]) -> str:
    """The post-incident report as Markdown."""
    r, rto, rpo = result, result["rto_s"], result["rpo"]
    lines = [f"# Post-incident report: region {r['region']} lost (drill)", "",
             f"PoPs {', '.join(r['pops'])}; users of the region: {', '.join(r['clients'])}.", "",
             "## Timeline (seconds after the fault)", "", "| t | event | detail |", "|---|---|---|"]
    lines += [f"| {e['t_s']:.3f} | {e['event']} | {e['detail']} |" for e in r["timeline"]]
    lines += ["", "## Recovery time", "",
              f"- Traffic shifted away: {rto['traffic_shifted']:.2f} s (the design's window: 30 s).",
              f"- Durable Objects moved: {rto['do_migrated']:.2f} s.",
              f"- Region restored and re-added: {rto['region_restored']:.2f} s (the design's window: 5 min).",
              "- By phase: " + ", ".join(f"{k} {v:.2f} s" for k, v in rto["phases"].items()) + ".",
              "", "## Data lost", "",
              f"- KV: {rpo['kv']['acked_writes']} writes acknowledged; lost per master: "
              + ", ".join(f"{m} {n}" for m, n in rpo["kv"]["lost_by_master"].items()) + ".",
              f"- Durable Objects: {rpo['do']['ops']} operations, {rpo['do']['acked_lost']} acknowledged changes lost, "
              f"history {'linearizable' if rpo['do']['linearizable'] else 'NOT linearizable'}.",
              f"- Control plane: deploys lost: {', '.join(rpo['control']['deploys_lost']) or 'none'}; a deploy during "
              f"the containment {'left' if rpo['control']['halt_held'] else 'DID NOT leave'} the halted region alone.",
              "", "## Alerts", ""]
    lines += [f"- {a['t_s']:.3f} s: {a['alert']} ({a['subject']}) {a['status']}, phase {a['phase']}"
              for a in r["alerts"]]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``drill-<region>.md`` and ``.json`` in ``out_dir``; raises OSError."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"drill-{result['region']}.md", out_dir / f"drill-{result['region']}.json"
    md.write_text(report(result))
    js.write_text(json.dumps(result, indent=1))
    return md, js


def run_drill(driver: Driver, region: str, out_dir: Path) -> dict[str, Any]:
    """Run the drill and write its report; raises as :meth:`Drill.run`, AnylabError if no report can
    be written."""
    result = Drill(driver, region).run()
    try:
        write_report(result, out_dir)
    except OSError as exc:
        raise AnylabError(f"cannot write the report in {out_dir}: {exc}") from exc
    return result
