# `python -m shmring` and the `shmring` console script: the command-line tool.
#
# Rules: this module only dispatches; everything lives in _cli.py, so importing the
# entry point (as the console script does) runs nothing.

from __future__ import annotations

import sys

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
