#!/usr/bin/env python3
"""The design's scaling stages as topologies (see model.generate for the shape and its AS relations).

    anylab up topologies/stages.py                      # stage 2: 50 PoPs in one region
    python3 topologies/stages.py --stage 1 > s1.yaml    # print a stage's YAML
    python3 topologies/stages.py --stage 3 --servers 2  # override a field of the shape
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from a checkout

from model.generate import stage


def topology() -> dict[str, Any]:
    """Stage 2 (what ``anylab up topologies/stages.py`` brings up)."""
    return stage(2)


def main() -> None:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--servers", type=int, help="servers per PoP")
    parser.add_argument("--pops-per-region", type=int)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    overrides = {k: v for k, v in (("servers", args.servers), ("pops_per_region", args.pops_per_region),
                                   ("seed", args.seed)) if v is not None}
    yaml.safe_dump(stage(args.stage, **overrides), sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
