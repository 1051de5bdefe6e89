# `python -m shmring.demo_camera`: runs the supervisor (_supervisor.py).

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
