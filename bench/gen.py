"""Job-side workload generator: the body of every benchmark job (runs on the cluster, stdlib only).

    gen.py stamped COUNT INTERVAL   COUNT time-stamped lines, INTERVAL seconds apart (log latency, chatty job)
    gen.py sized BYTES [--multibyte] numbered lines until BYTES (amplification, completeness, RSS)
    gen.py idle SECONDS              no output for SECONDS (requests of an idle job)

Every mode ends with one `<END|t=...>` line, the job's last write. Lines are flushed as written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lines import end_line, sized_line, sized_lines, stamped_line  # noqa: E402

WRITE_BLOCK = 1 << 20


def stamped(count: int, interval: float) -> None:
    start = time.monotonic()
    for seq in range(count):
        delay = start + seq * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sys.stdout.write(stamped_line(seq, time.time()))
        sys.stdout.flush()


def sized(total_bytes: int, multibyte: bool) -> None:
    out = sys.stdout.buffer
    block: list[bytes] = []
    size = 0
    for seq in range(sized_lines(total_bytes, multibyte)):
        line = sized_line(seq, multibyte).encode("utf-8")
        block.append(line)
        size += len(line)
        if size >= WRITE_BLOCK:
            out.write(b"".join(block))
            block, size = [], 0
    out.write(b"".join(block))
    out.flush()


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "stamped":
        stamped(int(argv[1]), float(argv[2]))
    elif mode == "sized":
        sized(int(argv[1]), "--multibyte" in argv[2:])
    elif mode == "idle":
        time.sleep(float(argv[1]))
    else:
        print(f"gen.py: unknown mode {mode!r}", file=sys.stderr)
        return 2
    sys.stdout.write(end_line(time.time()))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
