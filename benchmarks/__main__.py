"""``python -m benchmarks``: both benchmarks with short settings, one after the other.

For figures worth comparing use each benchmark's own defaults; see README.md.
"""

from __future__ import annotations

import sys

from benchmarks import intake, reconcile


def main() -> int:
    print("== webhook intake (short run) ==", flush=True)
    status = intake.main(["--duration", "4", "--repeat", "2"])
    print("\n== reconcile pass (short run) ==", flush=True)
    status = status or reconcile.main(["--sizes", "100,1000", "--repeat", "2"])

    return status


if __name__ == "__main__":
    sys.exit(main())
