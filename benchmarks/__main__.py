"""``python -m benchmarks``: every benchmark with short settings, one after another.

For figures worth comparing use each benchmark's own defaults; see README.md.
"""

from __future__ import annotations

import sys

from benchmarks import echo, intake, join, memory, reconcile
from benchmarks import open as mr_open


def main() -> int:
    print("== webhook intake (short run) ==", flush=True)
    status = intake.main(["--duration", "4", "--repeat", "2"])
    print("\n== reconcile pass (short run) ==", flush=True)
    status = status or reconcile.main(["--sizes", "100,1000", "--repeat", "2"])
    print("\n== MR opened -> comment (short run) ==", flush=True)
    status = status or mr_open.main(["--repeat", "3"])
    print("\n== join (short run) ==", flush=True)
    status = status or join.main(["--repeat", "5"])
    print("\n== keystroke echo (short run) ==", flush=True)
    status = status or echo.main(["--keys", "100"])
    print("\n== memory (short run) ==", flush=True)
    status = status or memory.main(["--deliveries", "2000", "--terminals", "20"])

    return status


if __name__ == "__main__":
    sys.exit(main())
