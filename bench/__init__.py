# bench: shmring measured against the alternatives, side by side.
#
# Rules: producer processes stream NumPy frames to consumer processes through one transport at a
# time, in the topologies of cell.py (1 -> 1 with the producer or the parent creating the
# channel, latest frame, fan-in 2 -> 1, groups 1 -> 2 sharing the work, fan-out 1 -> 3); every
# frame is verified (sequence number in its first and last 8 bytes, a CLOCK_MONOTONIC stamp next
# to the head); a cell with a lost, duplicate or torn frame fails. Processes are real
# (multiprocessing "spawn"), every wait is bounded, nothing stays in /dev/shm.
# Layout: cell.py (what a cell is, the topologies), frames.py (frame format, sizes), cpu.py (CPU
# accounting), verify.py (per-frame checks and the verdict), harness.py (the one
# producer/consumer harness), transports/ (one module per peer, all plugged into the harness),
# suite.py (which cells run), analysis.py (ratios, targets), plots.py (PNGs), report.py (JSON,
# markdown, console), __main__.py (CLI).
