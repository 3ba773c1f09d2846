#!/usr/bin/env python3
"""Side by side on the CPU: --shard none, grad-op and full at 2 and 4 ranks, for the
tiny preset and an 8-layer, 512-wide model at seq 512. Each rank is its own process
(RANK/WORLD_SIZE on loopback, as torchrun starts them); its peak RSS comes from
wait4's rusage. Prints a markdown table: global tokens/s (the run's summary, steps
after the first), peak RSS per rank, rank 0's bytes sent in the last step, and the
mean communication wait per step after the first.

    python3 scripts/shard-measure.py target/release/frugal [OUT_DIR]
"""
import os, sys, json, socket, subprocess, time, resource, shutil

if len(sys.argv) < 2:
    sys.exit("usage: scripts/shard-measure.py FRUGAL [OUT_DIR]")
BIN = sys.argv[1]
ROOT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.environ.get("TMPDIR", "/tmp"), "frugal-shard-measure")
shutil.rmtree(ROOT, ignore_errors=True); os.makedirs(ROOT)

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def run(name, world, mode, args):
    port = str(free_port())
    out = f"{ROOT}/{name}-{world}-{mode}"
    metrics = out + ".jsonl"
    procs = []
    for r in range(world):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, FRUGAL_JOB_TOKEN="meas",
                   FRUGAL_COMM_TIMEOUT="600")
        env.pop("FRUGAL_PRICE_PER_GPU_HOUR", None)
        cmd = [BIN, "train", *args, "--shard", mode, "--val-every", "0", "--val-batches", "1",
               "--ckpt-every", "0", "--out", out, "--metrics", metrics]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    rss = []
    for p in procs:
        _, status, ru = os.wait4(p.pid, 0)
        rss.append(ru.ru_maxrss // 1024)  # KiB -> MiB
        if status != 0:
            print(p.stdout.read().decode()[-2000:]); sys.exit(1)
    lines = [json.loads(l) for l in open(metrics)]
    summary = [l for l in lines if l.get("summary")][0]
    steps = [l for l in lines if "loss" in l]
    sent = steps[-1].get("comm_sent_bytes")
    wait = sum(l.get("comm_wait_ms") or 0 for l in steps[1:]) / max(1, len(steps) - 1)
    print(f"| {name} | {world} | {mode} | {summary['tokens_per_s']:.0f} | {' / '.join(map(str, rss))} | {sent/1e6:.1f} | {wait:.0f} |", flush=True)

TINY = ["--model", "tiny", "--steps", "6", "--batch", "4", "--threads", "1"]
BIG = ["--layers", "8", "--hidden", "512", "--heads", "8", "--ffn", "1376", "--seq", "512",
       "--steps", "4", "--batch", "1", "--threads", "1"]
print("| model | ranks | shard | tok/s (global) | peak RSS per rank, MiB (rank 0 / 1 / ...) | MB sent by rank 0 in the last step | comm wait ms/step |")
print("|---|---|---|---|---|---|---|")
for name, args in [("tiny", TINY), ("8x512", BIG)]:
    for world in (2, 4):
        for mode in ("none", "grad-op", "full"):
            run(name, world, mode, args)
