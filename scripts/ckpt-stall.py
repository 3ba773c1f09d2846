#!/usr/bin/env python3
"""How long a checkpoint save stalls training, measured from outside.

Runs `BIN train FLAGS --ckpt-every N --val-every 0` and stamps each step line as
it is printed. The gap between two step lines is the next step's own time
(`NNN ms` in the line) plus whatever ran between them: after a checkpoint step,
the save, synchronous or not. So stall = gap - next step's time, per save; the
same over steps without a save is the loop's own overhead, reported beside it.
A background save also competes with the steps that follow for the cores: the
step times with and without a save in flight are reported too. Works for any
frugal version, so the same command measures before and after.

usage: scripts/ckpt-stall.py BIN EVERY [train flags...]
"""
import re
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    binary, every, flags = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    with tempfile.TemporaryDirectory(prefix="ckpt-stall-") as out:
        cmd = [binary, "train", *flags, "--ckpt-every", str(every), "--val-every", "0",
               "--keep", "2", "--out", out]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        steps = []  # (arrival time, step number, step ms)
        line_re = re.compile(r"^step\s+(\d+)/\d+ \| .*? \| (\d+) ms")
        assert proc.stdout is not None
        for line in proc.stdout:
            m = line_re.match(line)
            if m:
                steps.append((time.monotonic(), int(m.group(1)), float(m.group(2))))
        rc = proc.wait()
        if rc != 0:
            print(f"train exited {rc}", file=sys.stderr)
            return 1
    saves, others, after_save, plain = [], [], [], []
    for (t0, n0, _), (t1, _, ms1) in zip(steps, steps[1:]):
        gap = (t1 - t0) * 1e3 - ms1
        if n0 % every == 0:
            saves.append(gap)
            after_save.append(ms1)
        else:
            others.append(gap)
            plain.append(ms1)
    if len(saves) < 2:
        print("need at least 2 saves before the last step", file=sys.stderr)
        return 1
    med = statistics.median
    print(f"saves: {len(saves)}; stall per save: median {med(saves):.0f} ms, max {max(saves):.0f} ms; "
          f"gap without a save: median {med(others) if others else 0:.0f} ms; "
          f"step time: {med(after_save):.0f} ms right after a save, "
          f"{med(plain) if plain else 0:.0f} ms otherwise")
    return 0


if __name__ == "__main__":
    sys.exit(main())
