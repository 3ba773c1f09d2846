# Regenerates tma_sum_pipelined.ptx and tma_sum_warp_specialized.ptx (Triton 3.9.0, no GPU
# needed): python gen_tma_sum.py. The kernel sums 64x64 fp16 tiles that a host-side
# TensorDescriptor (a CUtensorMap parameter) loads with TMA through a 3-stage mbarrier
# ring; the second file asks Triton's pipeliner to warp-specialise the loop.
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
