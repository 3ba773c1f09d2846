# Regenerates tma_sum_pipelined.ptx, tma_sum_warp_specialized.ptx and tma_scale_store.ptx
# (Triton 3.9.0, no GPU needed): python gen_tma_sum.py. The kernel sums 64x64 fp16 tiles that a host-side
# TensorDescriptor (a CUtensorMap parameter) loads with TMA through a 3-stage mbarrier
# ring; the second file asks Triton's pipeliner to warp-specialise the loop. The third
# loads 32x32 f32 tiles and stores 2x+1 with TMA stores, persistent over the tiles.
# The .file line's directory is then cut to the file name (no machine paths in the repo).
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


@triton.jit
def tma_sum(desc, out_ptr, n_tiles, BM: tl.constexpr, BN: tl.constexpr, WS: tl.constexpr):
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for t in tl.range(0, n_tiles, num_stages=3, warp_specialize=WS):
        x = desc.load([t * BM, 0])
        acc += x.to(tl.float32)
    offs = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
    tl.store(out_ptr + offs, acc)


for ws, name in [(False, "tma_sum_pipelined"), (True, "tma_sum_warp_specialized")]:
    src = ASTSource(
        fn=tma_sum,
        signature={"desc": "tensordesc<fp16[64, 64]>", "out_ptr": "*fp32", "n_tiles": "i32",
                   "BM": "constexpr", "BN": "constexpr", "WS": "constexpr"},
        constexprs={"BM": 64, "BN": 64, "WS": ws},
    )
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    # The metadata says the map Triton's launcher would encode: swizzle 3 (128B), fp16.
    print(name, k.metadata.shared, k.metadata.tensordesc_meta)
    open(f"{name}.ptx", "w").write(k.asm["ptx"])


@triton.jit
def tma_scale(src, dst, n_tiles, BM: tl.constexpr, BN: tl.constexpr):
    pid = tl.program_id(0)
    for t in tl.range(pid, n_tiles, tl.num_programs(0), num_stages=2):
        x = src.load([t * BM, 0])
        dst.store([t * BM, 0], x * 2.0 + 1.0)


src = ASTSource(
    fn=tma_scale,
    signature={"src": "tensordesc<fp32[32, 32]>", "dst": "tensordesc<fp32[32, 32]>",
               "n_tiles": "i32", "BM": "constexpr", "BN": "constexpr"},
    constexprs={"BM": 32, "BN": 32},
)
k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
print("tma_scale_store", k.metadata.shared, k.metadata.tensordesc_meta)
open("tma_scale_store.ptx", "w").write(k.asm["ptx"])
