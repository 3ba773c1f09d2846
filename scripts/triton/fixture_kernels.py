"""The Triton kernels behind ptx/tests/compiler_ptx/ (make_fixtures.py compiles them)."""

import triton
import triton.language as tl


@triton.jit
def vector_add(x, y, out, n, BLOCK: tl.constexpr):
    """out[i] = x[i] + y[i] for i < n (the last program is masked)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(x + offs, mask=mask)
    b = tl.load(y + offs, mask=mask)
    tl.store(out + offs, a + b, mask=mask)


@triton.jit
def softmax_rows(out, inp, in_stride, out_stride, n_cols, BLOCK: tl.constexpr):
    """One program per row: out = softmax(inp) over the first n_cols columns."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(inp + row * in_stride + cols, mask=mask, other=-float("inf"))
    x = x - tl.max(x, axis=0)
    e = tl.exp(x)
    y = e / tl.sum(e, axis=0)
    tl.store(out + row * out_stride + cols, y, mask=mask)


@triton.jit
def matmul(a, b, c, M, N, K, stride_am, stride_bk, stride_cm,
           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """c[M,N] = a[M,K] @ b[K,N], row-major, f32 accumulation, stored in c's type; every
    edge masked (ragged M, N and K)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        ka = k0 + rk
        a_tile = tl.load(a + rm[:, None] * stride_am + ka[None, :],
                         mask=(rm[:, None] < M) & (ka[None, :] < K), other=0.0)
        b_tile = tl.load(b + ka[:, None] * stride_bk + rn[None, :],
                         mask=(ka[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(a_tile, b_tile, acc)
    tl.store(c + rm[:, None] * stride_cm + rn[None, :], acc.to(c.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def matmul_tma(a_desc, b_desc, c_desc, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """c = a @ b with host-built tensor descriptors (TMA loads and stores), the k loop
    warp-specialised (a producer partition issuing TMA, consumers issuing wgmma)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in tl.range(0, tl.cdiv(K, BK), warp_specialize=True):
        a_tile = a_desc.load([pid_m * BM, k * BK])
        b_tile = b_desc.load([k * BK, pid_n * BN])
        acc = tl.dot(a_tile, b_tile, acc)
    c_desc.store([pid_m * BM, pid_n * BN], acc.to(tl.float16))
