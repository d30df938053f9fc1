"""Check protos/ for breaking changes against the frozen v1 contracts (buf's FILE rules).

`protos/FROZEN` names the commit at which v1 was frozen (docs/api-style.md, "Compatibility"): from then on a
change to the contracts must be additive. Before v1 is frozen there is nothing to compare with, which is not an
error.
"""

import subprocess
import sys
from pathlib import Path

FROZEN = Path("protos/FROZEN")


def main() -> int:
    if not FROZEN.exists():
        print("buf breaking: v1 is not frozen yet (no protos/FROZEN), nothing to compare")
        return 0
    commit = FROZEN.read_text().split()[0]
    known = subprocess.run(["git", "cat-file", "-e", f"{commit}:protos"], capture_output=True).returncode == 0
    if not known:
        print(f"buf breaking: protos/FROZEN names {commit}, which this clone does not have", file=sys.stderr)
        return 1
    return subprocess.run(
        ["buf", "breaking", "protos", "--against", f".git#ref={commit},subdir=protos"]
    ).returncode


if __name__ == "__main__":
    sys.exit(main())
