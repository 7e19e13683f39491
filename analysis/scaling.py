"""Kept for old commands: `python -m analysis.scaling PATHS` is now `python -m analysis all PATHS`.

It prints the new form on stderr and runs it: every figure and table that applies, written to --out
(default PATH/analysis/). `--format` is accepted and ignored (every figure is written as SVG and PNG).
"""

from __future__ import annotations

import sys

from analysis.cli import main as analysis_main
from analysis.tables import scaling_table

__all__ = ["main", "scaling_table"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--format" in argv:  # the old option: both formats are always written now
        i = argv.index("--format")
        del argv[i:i + 2]
    argv = [a for a in argv if not a.startswith("--format=")]
    print(f"note: `python -m analysis.scaling` is now `python -m analysis all {' '.join(argv)}`"
          " (see docs/ANALYSIS.md); running that", file=sys.stderr)
    return analysis_main(["all", *argv])


if __name__ == "__main__":
    sys.exit(main())
