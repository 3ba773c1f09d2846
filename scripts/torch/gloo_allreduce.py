#!/usr/bin/env python3
"""PyTorch Gloo all-reduce timed the way `frugal bench allreduce` times the socket ring.

Starts N local processes (torch.multiprocessing, no torchrun), joins them with
backend "gloo" over loopback, and all-reduces f32 tensors of each size:
warm-up, a barrier, then timed iterations. The time of a size is the slowest
rank's mean per iteration; algbw = bytes / time, busbw = algbw * 2(n-1)/n, as
nccl-tests and `frugal bench allreduce` define them. Iteration counts, warm-up
and the buffer's initial value are the same as frugal's, so the two compare
line by line. `cpu_ms` is the busiest rank's CPU time (user + system, all of
its threads, Gloo's included) per iteration.

Prints a table, or with --json one object per (ranks, size) in the schema of
`frugal bench allreduce --json` (bytes, ranks, iters, time_ms, algbw_GBps,
busbw_GBps, cpu_ms) plus "backend": "gloo".

  python gloo_allreduce.py --ranks 2,4 --sizes 4K,1M,64M --json
  python gloo_allreduce.py --device cuda    # CUDA tensors through Gloo (GPU machine)
"""

import argparse
import json
import os
import resource
import socket
import sys
import time


def parse_size(s):
    t = s.strip().rstrip("Bb").rstrip("i")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:].upper(), 1)
    if mult != 1:
        t = t[:-1]
    n = int(t) * mult
    if n < 4:
        raise argparse.ArgumentTypeError(f"'{s}' must be at least 4 bytes (one f32)")
    return n


def human(b):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if b >= 1 << shift and b % (1 << shift) == 0:
            return f"{b >> shift} {unit}"
    return f"{b} B"


def default_iters(nbytes):
    # Same as frugal: about 512 MiB of traffic per size, 3..1000 iterations.
    return max(3, min(1000, (512 << 20) // nbytes))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def worker(rank, world, port, sizes, iters, device, threads, results):
    import torch
    import torch.distributed as dist

    if threads:
        torch.set_num_threads(threads)
    dist.init_process_group(
        backend="gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
    )
    dev = torch.device(device if device != "cuda" else f"cuda:{rank % max(1, torch.cuda.device_count())}")
    for nbytes in sizes:
        n_iters = iters or default_iters(nbytes)
        warmup = max(1, min(20, n_iters // 10))
        buf = torch.full((nbytes // 4,), 1e-7, dtype=torch.float32, device=dev)
        for _ in range(warmup):
            dist.all_reduce(buf)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dist.barrier()
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        for _ in range(n_iters):
            dist.all_reduce(buf)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        ms = (time.perf_counter() - t0) * 1e3 / n_iters
        cpu_ms = (cpu_seconds() - cpu0) * 1e3 / n_iters
        # The slowest rank's time and the busiest rank's CPU, like frugal's bench.
        stats = torch.tensor([ms, cpu_ms], dtype=torch.float64)
        dist.all_reduce(stats, op=dist.ReduceOp.MAX)
        if rank == 0:
            results.put(((nbytes // 4) * 4, n_iters, stats[0].item(), stats[1].item()))
    dist.barrier()
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="2,4,8", help="rank counts (default 2,4,8)")
    p.add_argument("--sizes", default="4K,64K,1M,16M,64M,256M", help="sizes with K/M/G binary suffixes")
    p.add_argument("--iters", type=int, default=None, help="timed iterations per size (default: about 512 MiB of traffic, 3..1000)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per rank (default 1; 0 = torch's default)")
    p.add_argument("--json", action="store_true", help="one JSON object per (ranks, size)")
    a = p.parse_args()
    ranks = [int(r) for r in a.ranks.split(",") if r.strip()]
    sizes = [parse_size(s) for s in a.sizes.split(",") if s.strip()]
    if a.iters is not None and a.iters < 1:
        p.error("--iters must be at least 1")

    import torch
    import torch.multiprocessing as mp

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        sys.exit("this PyTorch build has no Gloo backend")
    # Gloo picks its interface from the hostname unless told; loopback, as frugal's bench.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

    if not a.json:
        print(f"{'ranks':>5} {'size':>10} {'iters':>7} {'time_ms':>12} {'algbw_GB/s':>12} {'busbw_GB/s':>12} {'cpu_ms':>10}")
    ctx = mp.get_context("spawn")
    for n in ranks:
        results = ctx.SimpleQueue()
        mp.start_processes(
            worker,
            args=(n, free_port(), sizes, a.iters, a.device, a.threads, results),
            nprocs=n,
            join=True,
            start_method="spawn",
        )
        while not results.empty():
            nbytes, n_iters, ms, cpu_ms = results.get()
            algbw = nbytes / (ms * 1e-3) / 1e9
            busbw = algbw * 2.0 * (n - 1) / n
            if a.json:
                print(json.dumps({
                    "backend": "gloo",
                    "bytes": nbytes,
                    "ranks": n,
                    "iters": n_iters,
                    "time_ms": round(ms, 6),
                    "algbw_GBps": round(algbw, 4),
                    "busbw_GBps": round(busbw, 4),
                    "cpu_ms": round(cpu_ms, 6),
                }), flush=True)
            else:
                print(f"{n:>5} {human(nbytes):>10} {n_iters:>7} {ms:>12.4f} {algbw:>12.3f} {busbw:>12.3f} {cpu_ms:>10.4f}", flush=True)


if __name__ == "__main__":
    main()
