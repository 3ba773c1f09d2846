#!/usr/bin/env python3
"""Predicted next to measured kernel times: the calibration step of scripts/gpu-check.sh.

    calibrate.py FRUGAL GPU LOGDIR OUT.json

reads the `frugal bench ... --json` lines gpu-check.sh saved in LOGDIR
(frugal-matmul.jsonl, frugal-attention.jsonl, frugal-kernels.jsonl: MEASURED times),
runs `FRUGAL profile --kernel ... --shape ... --gpu GPU --json` for each of a fixed
list of them (the PREDICTED time, from the emulator's counters on this machine's CPU),
prints a table of both and their ratio, and writes OUT.json: per kernel family (the
kernel name's first `_` word, as `frugal profile --calibration` reads it) the median of
measured / predicted. The rows themselves go to OUT.json's sibling `*-rows.jsonl`.

The list: every matmul product of the bench (unbatched, at most MAX_MATMULS), flash
attention forward and forward+backward of each bench row, and the `bench kernels` cases
in KERNELS. A row whose profile fails is reported and left out; the script fails only
when no row could be compared.

    calibrate.py --self-test
checks the joining and the medians on made-up lines, with no frugal binary.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

MAX_MATMULS = 12
KERNELS = {
    "rmsnorm-fwd", "rmsnorm-bwd", "rope-fwd", "swiglu-fwd", "swiglu-bwd",
    "cross-entropy", "embedding-fwd", "adamw",
}
PROFILE_TIMEOUT_S = 120


def family(kernel):
    """The calibration family of a kernel name: its first `_` word (matmul_tc_... -> matmul)."""
    return kernel.split("_")[0]


def read_jsonl(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return out


def attention_rows(logdir):
    """bench attention's lines, each replaced by the `--tma` bench's line of the same shape
    and pass where that one ran the wgmma forward (it names its "kernel": an sm_90 GPU), since
    `profile --kernel flash-fwd` on sm_90 predicts the wgmma forward, as the step runs it."""
    def key(r):
        return tuple(r.get(f) for f in (
            "attention", "pass", "model", "batch", "heads", "kv_heads", "seq", "head_dim", "dq"))
    wgmma = {key(r): r for r in read_jsonl(os.path.join(logdir, "frugal-attention-wgmma.jsonl"))
             if r.get("kernel")}
    return [wgmma.get(key(r), r)
            for r in read_jsonl(os.path.join(logdir, "frugal-attention.jsonl"))]


def cases(logdir):
    """(family, label, [profile argument lists], measured seconds) for each row to compare.

    A case with two argument lists (flash forward+backward) is predicted as their sum.
    """
    out = []
    matmuls = [r for r in read_jsonl(os.path.join(logdir, "frugal-matmul.jsonl"))
               if not r.get("summary") and r.get("batch", 1) == 1 and "us" in r]
    for r in matmuls[:MAX_MATMULS]:
        args = ["--kernel", "matmul", "--shape", f"{r['m']},{r['n']},{r['k']}",
                "--layout", r["layout"], "--out-type", r["out"]]
        if r.get("epilogue") == "accumulate":
            args.append("--accumulate")
        label = f"matmul {r['m']}x{r['n']}x{r['k']} {r['layout']} {r['out']} ({r.get('kernel', '?')})"
        out.append(("matmul", label, [args], r["us"] * 1e-6))
    for r in attention_rows(logdir):
        if r.get("attention") != "flash" or "time_ms" not in r:
            continue
        shape = f"{r['batch']},{r['heads']},{r['seq']},{r['head_dim']},{r['kv_heads']}"
        passes = ["flash-fwd"] if r["pass"] == "fwd" else ["flash-fwd", "flash-bwd"]
        extra = ["--attention-dq", r["dq"]] if r.get("dq") else []
        label = f"flash {r['pass']} {r.get('model', '')} B={r['batch']} NH={r['heads']} T={r['seq']}"
        out.append(("flash", label,
                    [["--kernel", p, "--shape", shape] + extra for p in passes],
                    r["time_ms"] * 1e-3))
    for r in read_jsonl(os.path.join(logdir, "frugal-kernels.jsonl")):
        if r.get("profile_kernel") not in KERNELS or "time_us" not in r:
            continue
        out.append((family(r["kernel"]), f"{r['profile_kernel']} {r['profile_shape']}",
                    [["--kernel", r["profile_kernel"], "--shape", r["profile_shape"]]],
                    r["time_us"] * 1e-6))
    return out


def predict(frugal, gpu, args):
    """Predicted seconds of one `profile --kernel` run on `gpu`, or an error string."""
    cmd = [frugal, "profile", *args, "--gpu", gpu, "--json"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=PROFILE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{' '.join(cmd)}: {e}"
    if p.returncode != 0:
        return None, f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip().splitlines()[:1]}"
    try:
        return json.loads(p.stdout)["gpus"][0]["total"]["predicted_s"], None
    except (ValueError, KeyError, IndexError, TypeError) as e:
        return None, f"{' '.join(cmd)}: unreadable output ({e})"


def calibrate(rows):
    """Per family, the median of measured / predicted over rows (family, measured, predicted)."""
    by = {}
    for fam, measured, predicted in rows:
        if measured > 0 and predicted and predicted > 0:
            by.setdefault(fam, []).append(measured / predicted)
    return {fam: statistics.median(r) for fam, r in sorted(by.items())}


def run(frugal, gpu, logdir, out_path, predictor=None):
    predictor = predictor or (lambda args: predict(frugal, gpu, args))
    todo = cases(logdir)
    if not todo:
        print(f"calibrate: no bench JSON lines in {logdir} to compare with", file=sys.stderr)
        return 1
    rows, records, failures = [], [], 0
    print(f"calibration on {gpu}: MEASURED (frugal bench) vs PREDICTED (frugal profile, emulated counters)")
    print(f"{'family':<10} {'case':<62} {'measured us':>12} {'predicted us':>13} {'ratio':>7}")
    for fam, label, arg_lists, measured in todo:
        total, err = 0.0, None
        for args in arg_lists:
            t, err = predictor(args)
            if err:
                break
            total += t
        if err:
            failures += 1
            print(f"{fam:<10} {label[:62]:<62} {measured * 1e6:>12.2f} {'FAILED':>13}   ({err})")
            continue
        ratio = measured / total if total > 0 else float("nan")
        print(f"{fam:<10} {label[:62]:<62} {measured * 1e6:>12.2f} {total * 1e6:>13.2f} {ratio:>7.3f}")
        rows.append((fam, measured, total))
        records.append({"family": fam, "case": label, "profile": arg_lists,
                        "measured_s": measured, "predicted_s": total, "ratio": ratio})
    factors = calibrate(rows)
    print("per-family factor (median of measured/predicted; frugal profile --calibration):")
    for fam, x in factors.items():
        n = sum(1 for r in rows if r[0] == fam)
        print(f"  {fam:<10} {x:8.3f}  ({n} case{'s' if n != 1 else ''})")
    if failures:
        print(f"calibrate: {failures} case(s) could not be predicted (see above)")
    with open(out_path, "w") as f:
        json.dump(factors, f, indent=1, sort_keys=True)
        f.write("\n")
    rows_path = os.path.splitext(out_path)[0] + "-rows.jsonl"
    with open(rows_path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    print(f"calibrate: wrote {out_path} and {rows_path}")
    return 0 if factors else 1


def self_test():
    with tempfile.TemporaryDirectory() as d:
        def write(name, objs):
            with open(os.path.join(d, name), "w") as f:
                f.write("not json\n")
                for o in objs:
                    f.write(json.dumps(o) + "\n")
        write("frugal-matmul.jsonl", [
            {"m": 64, "n": 128, "k": 32, "layout": "nt", "out": "bf16", "epilogue": "overwrite",
             "batch": 1, "kernel": "matmul_tc_x", "us": 30.0},
            {"m": 64, "n": 64, "k": 64, "layout": "tn", "out": "f32", "epilogue": "accumulate",
             "batch": 1, "kernel": "matmul_tc_y", "us": 10.0},
            {"m": 8, "n": 8, "k": 8, "layout": "nn", "out": "bf16", "batch": 4, "us": 1.0},
            {"summary": True, "us": 99.0},
        ])
        write("frugal-attention.jsonl", [
            {"attention": "flash", "pass": "fwd", "batch": 1, "heads": 2, "kv_heads": 2,
             "seq": 64, "head_dim": 64, "dq": "deterministic", "time_ms": 0.02},
            {"attention": "flash", "pass": "fwd_bwd", "batch": 1, "heads": 2, "kv_heads": 2,
             "seq": 64, "head_dim": 64, "dq": "deterministic", "time_ms": 0.09},
            {"attention": "vanilla", "pass": "fwd", "time_ms": 1.0},
        ])
        write("frugal-kernels.jsonl", [
            {"kernel": "rmsnorm_fwd", "profile_kernel": "rmsnorm-fwd", "profile_shape": "4,8",
             "time_us": 5.0},
            {"kernel": "grad_norm_finish", "profile_kernel": "grad-norm-finish",
             "profile_shape": "9", "time_us": 5.0},
        ])
        got = cases(d)
        assert [c[0] for c in got] == ["matmul", "matmul", "flash", "flash", "rmsnorm"], got
        assert "--accumulate" in got[1][2][0] and "--accumulate" not in got[0][2][0]
        assert [a[1] for a in got[3][2]] == ["flash-fwd", "flash-bwd"], got[3]

        # Predicted: 10 us for every run; flash fwd+bwd is two runs = 20 us.
        def fake(args):
            if args[1] == "rmsnorm-fwd":
                return None, "fails on purpose"
            return 10e-6, None
        out = os.path.join(d, "calibration.json")
        assert run("frugal", "h100-sxm", d, out, fake) == 0
        with open(out) as f:
            factors = json.load(f)
        # matmul: median(3.0, 1.0) = 2.0; flash: median(2.0, 4.5) = 3.25; rmsnorm failed.
        assert factors.keys() == {"matmul", "flash"}, factors
        assert abs(factors["matmul"] - 2.0) < 1e-9 and abs(factors["flash"] - 3.25) < 1e-9, factors
        with open(os.path.join(d, "calibration-rows.jsonl")) as f:
            assert len(f.readlines()) == 4
        assert calibrate([("a", 1.0, 0.0), ("a", 2.0, 1.0)]) == {"a": 2.0}
        assert calibrate([("a", 1.0, 1.0), ("a", 3.0, 1.0), ("a", 9.0, 1.0)]) == {"a": 3.0}
        # An sm_90 GPU's --tma lines (naming the wgmma kernel) replace the FA-2 ones of
        # the same shape and pass; a line without a kernel (FA-2 again) does not.
        write("frugal-attention-wgmma.jsonl", [
            {"attention": "flash", "pass": "fwd", "batch": 1, "heads": 2, "kv_heads": 2,
             "seq": 64, "head_dim": 64, "dq": "deterministic", "time_ms": 0.01,
             "kernel": "flash_attn_fwd_wgmma_hs64"},
            {"attention": "flash", "pass": "fwd_bwd", "batch": 1, "heads": 2, "kv_heads": 2,
             "seq": 64, "head_dim": 64, "dq": "deterministic", "time_ms": 0.5, "kernel": None},
        ])
        got = cases(d)
        assert abs(got[2][3] - 0.01e-3) < 1e-12 and abs(got[3][3] - 0.09e-3) < 1e-12, got
        empty = os.path.join(d, "empty")
        os.mkdir(empty)
        assert run("frugal", "h100-sxm", empty, out, fake) == 1
    print("calibrate.py self-test: ok")
    return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    return run(argv[1], argv[2], argv[3], argv[4])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
