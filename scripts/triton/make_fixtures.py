#!/usr/bin/env python3
"""Regenerates ptx/tests/compiler_ptx/: PTX that Triton (a third-party compiler) emits for
our own small kernels, so that the emulator is tested against PTX it was not written for.

Needs only the `triton` package (PyPI; it compiles to PTX with no GPU). Run it with the
Python of a virtual environment outside the repository that has Triton installed:

    python3 -m venv ~/.cache/frugal/triton-venv
    ~/.cache/frugal/triton-venv/bin/pip install triton
    ~/.cache/frugal/triton-venv/bin/python scripts/triton/make_fixtures.py

For each kernel it writes `<name>.ptx` and a line of `fixtures.json`: the entry name, the
target, the launch block (Triton's num_warps x 32 threads), the dynamic shared memory
Triton asks for, the parameters in order (Triton's signature types, then the two global
scratch pointers Triton 3.x appends to every kernel; a tensor descriptor is its CUtensorMap
followed by the tensor's shape and strides), the compile-time constants, and for
tensor-descriptor parameters the descriptor encoding Triton expects the host to build.
"""

import importlib.util
import json
import os
import sys
import warnings

# No line information: LLVM writes absolute paths of this machine (the kernels' file, Triton's
# own library) into `.file` directives and the DWARF sections, which must not be committed.
os.environ["TRITON_DISABLE_LINE_INFO"] = "1"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
OUT = os.path.join("ptx", "tests", "compiler_ptx")
KERNELS = os.path.join("scripts", "triton", "fixture_kernels.py")


def load_kernels():
    """Imports the kernels' file (run from the repository root, so that OUT is relative)."""
    os.chdir(ROOT)
    spec = importlib.util.spec_from_file_location("fixture_kernels", KERNELS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


K = load_kernels()


def divisible(*indices):
    """Triton's `tt.divisibility = 16` for the given parameter positions (what its launcher
    infers for 16-byte aligned pointers and multiples of 16; it lets Triton vectorise)."""
    return {(i, ): [["tt.divisibility", 16]] for i in indices}


MATMUL_SIG = {"a": None, "b": None, "c": None, "M": "i32", "N": "i32", "K": "i32",
              "stride_am": "i32", "stride_bk": "i32", "stride_cm": "i32",
              "BM": "constexpr", "BN": "constexpr", "BK": "constexpr"}


def matmul_sig(ab, c):
    sig = dict(MATMUL_SIG)
    sig.update(a=f"*{ab}", b=f"*{ab}", c=f"*{c}")
    return sig


# (fixture name, function, signature, constants, attributes, capability, num_warps, num_stages)
FIXTURES = [
    ("vector_add_f32", K.vector_add, {"x": "*fp32", "y": "*fp32", "out": "*fp32", "n": "i32", "BLOCK": "constexpr"},
     {"BLOCK": 1024}, divisible(0, 1, 2), 80, 4, 3),
    ("softmax_rows_f32", K.softmax_rows,
     {"out": "*fp32", "inp": "*fp32", "in_stride": "i32", "out_stride": "i32", "n_cols": "i32", "BLOCK": "constexpr"},
     {"BLOCK": 256}, divisible(0, 1), 80, 4, 3),
    ("matmul_f16_sm80", K.matmul, matmul_sig("fp16", "fp16"), {"BM": 64, "BN": 64, "BK": 32},
     divisible(0, 1, 2, 6, 7, 8), 80, 4, 3),
    ("matmul_bf16_sm80", K.matmul, matmul_sig("bf16", "fp32"), {"BM": 64, "BN": 64, "BK": 32},
     divisible(0, 1, 2, 6, 7, 8), 80, 4, 3),
    ("matmul_f16_sm90", K.matmul, matmul_sig("fp16", "fp16"), {"BM": 64, "BN": 64, "BK": 32},
     divisible(0, 1, 2, 6, 7, 8), 90, 4, 3),
    ("matmul_tma_ws_sm90", K.matmul_tma,
     {"a_desc": "tensordesc<fp16[64,64]>", "b_desc": "tensordesc<fp16[64,64]>", "c_desc": "tensordesc<fp16[64,64]>",
      "K": "i32", "BM": "constexpr", "BN": "constexpr", "BK": "constexpr"},
     {"BM": 64, "BN": 64, "BK": 64}, {}, 90, 4, 3),
]


def main():
    warnings.simplefilter("ignore")
    os.makedirs(OUT, exist_ok=True)
    records = []
    for name, fn, sig, consts, attrs, cap, warps, stages in FIXTURES:
        src = ASTSource(fn, sig, consts, attrs)
        kernel = triton.compile(src, target=GPUTarget("cuda", cap, 32),
                                options={"num_warps": warps, "num_stages": stages})
        ptx = kernel.asm["ptx"]
        with open(os.path.join(OUT, f"{name}.ptx"), "w") as f:
            f.write(ptx)
        md = kernel.metadata
        params = []
        for k, v in sig.items():
            if v == "constexpr":
                continue
            if v.startswith("tensordesc"):
                # Triton passes a host tensor descriptor as the 128-byte CUtensorMap, then
                # the tensor's shape (i32 each) and strides (i64 each, in elements).
                rank = v.count(",") + 1
                params.append({"name": k, "type": "tensormap"})
                params += [{"name": f"{k}_shape{i}", "type": "i32"} for i in range(rank)]
                params += [{"name": f"{k}_stride{i}", "type": "i64"} for i in range(rank)]
            else:
                params.append({"name": k, "type": v})
        params += [{"name": "global_scratch", "type": "*i8"}, {"name": "profile_scratch", "type": "*i8"}]
        records.append({
            "fixture": name,
            "entry": md.name,
            "target": f"sm_{cap}" + ("a" if cap == 90 else ""),
            "threads": md.num_warps * 32,
            "dynamic_shared_bytes": md.shared,
            "params": params,
            "constants": consts,
            "tensor_descriptors": md.tensordesc_meta,
        })
        print(f"{name}: {md.name}, {md.num_warps} warps, {md.shared} bytes shared", file=sys.stderr)
    with open(os.path.join(OUT, "fixtures.json"), "w") as f:
        json.dump({"triton": triton.__version__, "fixtures": records}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
