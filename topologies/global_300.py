#!/usr/bin/env python3
"""The design's Stage 3: 300 PoPs in 6 regions, 102 routers (6 tier-1s peering in a full mesh, 16
regional transits per region), 6 clients (one per region), valley-free AS relations; 1 server per PoP
(the design's 10 are in docs/scaling.md). Deterministic (seed 1).

    anylab up topologies/global_300.py
    python3 topologies/global_300.py --pops-per-region 5 > /tmp/g30.yaml   # 30 PoPs, same shape
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from a checkout

from model.generate import stage


def topology(pops_per_region: int = 50, transits_per_region: int = 16) -> dict[str, Any]:
    """Stage 3; smaller sizes of the same shape with fewer PoPs (and transits) per region."""
    return stage(3, pops_per_region=pops_per_region, transits_per_region=transits_per_region,
                 name=f"global-{6 * pops_per_region}")


def main() -> None:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pops-per-region", type=int, default=50)
    parser.add_argument("--transits-per-region", type=int, default=16)
    args = parser.parse_args()
    yaml.safe_dump(topology(args.pops_per_region, args.transits_per_region), sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
