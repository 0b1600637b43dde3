"""`make clean`: remove what runs of this testbed left behind, by the names and pids they recorded."""

from __future__ import annotations

import sys

from nodes.net import clean_leftovers


def main() -> int:
    """Clean leftovers and say what was removed."""
    done = clean_leftovers()
    for item in done:
        print(f"removed {item}")
    print("nothing of ours was left" if not done else f"removed {len(done)} leftovers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
