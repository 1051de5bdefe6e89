# bench: shmring measured against the alternatives, side by side.
#
# Rules: one producer process streams NumPy frames to one (or three) consumer processes through
# one transport at a time; every frame is verified (sequence number in its first and last 8 bytes,
# a CLOCK_MONOTONIC stamp next to the head); a cell with a gap, duplicate or torn frame fails.
# Processes are real (multiprocessing "spawn"), every wait is bounded, nothing stays in /dev/shm.
# Layout: frames.py (frame format, sizes), cpu.py (CPU accounting), harness.py (the one
# producer/consumer harness), transports/ (one module per peer, all plugged into the harness),
# suite.py (which cells run), report.py (JSON, markdown, plots, targets), __main__.py (CLI).
