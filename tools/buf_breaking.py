"""Check protos/ for breaking changes against the previous commit's contracts (buf's FILE rules).

On the very first commit there is nothing to compare with, which is not an error.
"""

import subprocess
import sys


def main() -> int:
    has_parent = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "HEAD~1:protos"], capture_output=True
    ).returncode == 0
    if not has_parent:
        print("buf breaking: no previous commit with protos/, nothing to compare")
        return 0
    return subprocess.run(
        ["buf", "breaking", "protos", "--against", ".git#ref=HEAD~1,subdir=protos"]
    ).returncode


if __name__ == "__main__":
    sys.exit(main())
