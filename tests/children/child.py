"""An unrelated ``python`` program for the tests: ``child.py FUNC JSON_KWARGS``.

It is started with ``subprocess.Popen`` (not multiprocessing), attaches to rings by name
and talks to the test over stdin/stdout (newline-delimited JSON).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import helpers

if __name__ == "__main__":
    sys.exit(helpers.popen_main(sys.argv[1:]))
