#!/usr/bin/env python3
"""Joins two runs of one benchmark, given as JSON lines, into ratio columns.

  scripts/bench-join.py WHAT OURS.jsonl THEIRS.jsonl LABEL

OURS holds `frugal bench WHAT --json` lines, THEIRS another implementation's lines in the
same schema (scripts/torch/WHAT.py). Lines are matched on the fields both first lines have
that describe the shape: every field but times, rates and implementation names, and but
fields whose values never agree between the files (labels such as "flash" vs "sdpa"); a
line with `"summary": true` is skipped. Prints one row per frugal line: its name, both times
and LABEL/frugal (above 1: frugal is faster), then the count-weighted total. Exit status 1
when THEIRS has lines but none matches; 0 otherwise. Standard library only (the GPU
machine's python3 may have nothing else).
"""

import json
import sys

TIMES = ("us", "ms", "time_us", "time_ms")
# Measurements and implementation names: not part of the shape.
NOT_SHAPE = set(TIMES) | {
    "tflops", "gbps", "GBps", "kernel", "split", "emulated", "backend", "device",
    "timing", "iters", "warmup", "impl", "framework", "source", "torch", "note",
}


def read_lines(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict) and not obj.get("summary"):
                    out.append(obj)
    except OSError:
        pass
    return out


def norm(v):
    # 1 and 1.0 must match (one side may print alpha as an integer).
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(float(v))
    return repr(v)


UNITS = {"us": "us", "time_us": "us", "ms": "ms", "time_ms": "ms"}


def time_of(obj):
    """(unit, time) of a line: its first time field, as printed."""
    for t in TIMES:
        v = obj.get(t) if obj else None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return UNITS[t], float(v)
    return None, None


def main(argv):
    if len(argv) != 5:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    what, ours_path, theirs_path, label = argv[1:5]
    ours, theirs = read_lines(ours_path), read_lines(theirs_path)
    if not ours or not theirs:
        print(f"compare {what}: nothing to join (frugal {len(ours)} lines, {label} {len(theirs)})")
        return 1 if theirs else 0
    fields = sorted(
        f for f in set(ours[0]) & set(theirs[0])
        if f not in NOT_SHAPE and not isinstance(ours[0][f], (list, dict))
    )
    # A field whose values never agree between the two files labels the implementation
    # (e.g. "attention": "flash" vs "sdpa"), not the shape: leave it out of the key.
    labels = [
        f for f in fields
        if not {norm(o.get(f)) for o in ours} & {norm(o.get(f)) for o in theirs}
    ]
    fields = [f for f in fields if f not in labels]
    index = {}
    for obj in theirs:
        if all(f in obj for f in fields):
            index[tuple(norm(obj[f]) for f in fields)] = obj
    name_field = next((f for f in ("product", "op", "name", "shape") if f in fields), None)
    ratio_head = f"{label}/frugal"
    print(f"compare {what}: frugal vs {label}, joined on {', '.join(fields)}")
    if labels:
        print(f"compare {what}: left out of the key (values never agree): {', '.join(labels)}")
    print(f"{name_field or 'shape':<30} {'frugal':>13} {label:>13} {ratio_head:>14}")
    tot_ours = tot_theirs = 0.0
    matched = 0
    for obj in ours:
        if not all(f in obj for f in fields):
            continue
        other = index.get(tuple(norm(obj[f]) for f in fields))
        unit, mine = time_of(obj)
        _, theirs_t = time_of(other)
        if name_field:
            name = str(obj.get(name_field))
        else:
            name = "/".join(str(obj[f]) for f in fields[:4])
        if mine is None or theirs_t is None:
            print(f"{name[:30]:<30} {'-' if mine is None else f'{mine:.3f}':>13} {'-':>13} {'-':>14}")
            continue
        count = float(obj.get("count", 1) or 1)
        tot_ours += count * mine
        tot_theirs += count * theirs_t
        matched += 1
        ratio = theirs_t / mine if mine > 0 else float("inf")
        print(f"{name[:30]:<30} {mine:>11.3f}{unit} {theirs_t:>11.3f}{unit} {ratio:>14.3f}")
    if not matched:
        print(f"compare {what}: no row matched")
        return 1
    total = tot_theirs / tot_ours if tot_ours > 0 else float("inf")
    print(f"{'total (count-weighted)':<30} {tot_ours:>13.3f} {tot_theirs:>13.3f} {total:>14.3f}")
    print(f"compare {what}: {matched} of {len(ours)} rows matched; {ratio_head} above 1: frugal is faster")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
