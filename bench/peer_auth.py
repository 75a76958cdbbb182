#!/usr/bin/env python3
"""Benchmark (not a test): what signing and checking one internal request costs (:mod:`core.peer_auth`).

For bodies of 0 B, 1 KiB, 64 KiB and 1 MiB: the time to sign (the header) and to check (MAC, window,
nonce bookkeeping), per request, in µs (p50 and p99 of ``--n`` requests, one core), and — so that the
figure could have failed — how many of the same requests changed by one byte after signing were taken
(must be 0) and how many replays were taken (must be 0).

    .venv/bin/python bench/peer_auth.py [--n 20000]

Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from core.clock import monotonic  # noqa: E402
from core.peer_auth import PeerAuthError, PeerKeys, Signer, Verifier, node_key  # noqa: E402
from core.stats import quantile  # noqa: E402


def run(n: int) -> dict[str, object]:
    keys = PeerKeys.make()
    signer = Signer("kv-replica/sjc-s1", node_key(keys.secrets["kv-replica"], "sjc-s1"))
    out: dict[str, object] = {}
    for size in (0, 1024, 64 * 1024, 1024 * 1024):
        count = n if size <= 65536 else max(200, n // 50)
        verifier = Verifier({"kv-replica": keys.secrets["kv-replica"]}, "10.0.0.1:8100", max_nonces=10 * count)
        body = b"x" * size
        sign_us, check_us, taken_changed, taken_replayed = [], [], 0, 0
        for i in range(count):
            t0 = monotonic()
            header = signer.headers("POST", "10.0.0.1:8100", "/v1/kv/ns/put", body)["X-Anylab-Auth"]
            t1 = monotonic()
            verifier.check("POST", "/v1/kv/ns/put", header, body)
            t2 = monotonic()
            sign_us.append((t1 - t0) * 1e6)
            check_us.append((t2 - t1) * 1e6)
            if i % 100 == 0:
                for sent in (body + b"y", body):  # changed after signing; then the same request again
                    try:
                        verifier.check("POST", "/v1/kv/ns/put", header, sent)
                    except PeerAuthError:
                        continue
                    if sent is body:
                        taken_replayed += 1
                    else:
                        taken_changed += 1
        out[f"{size}B"] = {"n": count, "sign_us": {"p50": round(quantile(sign_us, 0.5) or 0, 2),
                                                   "p99": round(quantile(sign_us, 0.99) or 0, 2)},
                           "check_us": {"p50": round(quantile(check_us, 0.5) or 0, 2),
                                        "p99": round(quantile(check_us, 0.99) or 0, 2)},
                           "changed_taken": taken_changed, "replays_taken": taken_replayed}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    print(json.dumps({"bench": "peer_auth", "python": sys.version.split()[0], "results": run(args.n)}, indent=1))


if __name__ == "__main__":
    main()
