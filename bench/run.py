# `python bench/run.py [options]`: the same as `python -m bench` from the repository root.
#
# Rules: a script run puts bench/ (not the repository root) on sys.path, so this adds the root
# before importing the package; spawned children inherit that sys.path.
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.__main__ import main

    raise SystemExit(main())
