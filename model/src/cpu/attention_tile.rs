//! The small products inside the fused attention: C (m × n) (=|+=) A (m × k) · B (k × n)
//! over strided operands, with every block's operands already in L1/L2, so nothing is
//! packed. Each element of C is one running sum over k in order, started from 0 (or
//! from C's value when adding), one rounding per multiply-add in the FMA kernels (two
//! in the portable one).
//!
//! The AVX2+FMA and AVX-512 kernels come from one macro body, so their structure is the
//! same: 6-row tiles of two vectors of B per k (16 or 32 columns), then one vector,
//! then single columns with a scalar FMA, each skipping what a causal block's hint
//! ([`Causal`]) says is not needed; vector lanes are columns of C, so no sum is
//! ever split across lanes and both widths give the same bits. (The AVX-512 copy
//! compiles everywhere but runs only on a CPU that has it.)

/// What a causal block lets a product skip (every product in the attention has a
/// place in the triangle; off ≥ the block's size makes it dense), with `off` = the block's first query
/// position minus its first key position (query row i sees key column j where j ≤ i + off).
/// Register tiles wholly outside the triangle are skipped; a tile that straddles it is
/// computed whole, so each element it keeps is the same sum as without the hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Causal {
    /// Only C(i, j) with j ≤ i + off is wanted; the rest of C is left unspecified (the
    /// caller masks it).
    Cols(usize),
    /// Only C(i, j) with j ≥ i − off is wanted (the transposed triangle: rows are keys,
    /// columns queries); the rest of C is left unspecified.
    ColsFrom(usize),
    /// A(i, p) is zero where p > i + off: row i's sum stops after p = i + off.
    KUpTo(usize),
    /// A(i, p) is zero where p < i − off: row i's sum starts at p = i − off.
    KFrom(usize),
}

/// One product's operands: A's element (i, p) at `a[i·ars + p·acs]`, B's (p, j) at
/// `b[p·brs + j]`, C's (i, j) at `c[i·ldc + j]`; `add` adds to C instead of overwriting;
/// `causal` what the kernel may skip (the portable kernel ignores it).
///
/// Skipping the zero terms of a [`Causal::KUpTo`] or [`Causal::KFrom`] sum leaves its
/// bits as they were (x + 0·b = x) for finite B, except that a sum that is exactly −0
/// stays −0 where adding +0 would have made it +0.
#[derive(Clone, Copy, Debug)]
pub(super) struct Mm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: *const f32,
    pub ars: usize,
    pub acs: usize,
    pub b: *const f32,
    pub brs: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub add: bool,
    pub causal: Causal,
}

impl Mm {
    /// The k range of the sums of rows i..i+rows, and the columns they need (from, to).
    #[inline(always)]
    fn ranges(&self, i: usize, rows: usize) -> (usize, usize, usize, usize) {
        match self.causal {
            Causal::Cols(off) => (0, self.k, 0, self.n.min(i + rows + off)),
            Causal::ColsFrom(off) => (0, self.k, i.saturating_sub(off).min(self.n), self.n),
            Causal::KUpTo(off) => (0, self.k.min(i + rows + off), 0, self.n),
            Causal::KFrom(off) => (i.saturating_sub(off).min(self.k), self.k, 0, self.n),
        }
    }
}

/// A kernel for [`Mm`] products.
pub(super) trait Tile {
    /// Computes the product.
    ///
    /// # Safety
    /// Every element the operands name must be in bounds (C's writable, not aliased by
    /// A or B), and the CPU must have the kernel's instructions.
    unsafe fn mm(p: Mm);

    /// Σ a[i]·b[i] for i in 0..n as one running sum in order, with the arithmetic of
    /// [`Tile::mm`] (so a dot product equals the matching element of a product bit for bit).
    ///
    /// # Safety
    /// `a` and `b` hold n elements each; the CPU has the kernel's instructions.
    unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32;

    /// `out[r] = Σ a[r·stride + i]·b[r·stride + i]` for i in 0..n, each exactly
    /// [`Tile::dot`] of row r; the R sums advance together, so their FMAs overlap
    /// instead of waiting on one chain's latency.
    ///
    /// # Safety
    /// Rows 0..R of both operands hold n elements each at `stride`; the CPU has the
    /// kernel's instructions.
    #[inline(always)]
    unsafe fn dot_rows<const R: usize>(
        a: *const f32,
        b: *const f32,
        stride: usize,
        n: usize,
    ) -> [f32; R] {
        let mut acc = [0.0f32; R];
        for i in 0..n {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                *acc_r = Self::madd(*a.add(r * stride + i), *b.add(r * stride + i), *acc_r);
            }
        }
        acc
    }

    /// `acc + x·y` in the kernel's arithmetic: fused where [`Tile::mm`] fuses.
    fn madd(x: f32, y: f32, acc: f32) -> f32;
}

/// Plain Rust, vectorised over C's columns by the compiler: a separate multiply and add.
pub(super) struct Portable;

impl Tile for Portable {
    #[inline(always)]
    unsafe fn mm(p: Mm) {
        for i in 0..p.m {
            let crow = std::slice::from_raw_parts_mut(p.c.add(i * p.ldc), p.n);
            if !p.add {
                crow.iter_mut().for_each(|x| *x = 0.0);
            }
            for q in 0..p.k {
                let aiq = *p.a.add(i * p.ars + q * p.acs);
                let brow = std::slice::from_raw_parts(p.b.add(q * p.brs), p.n);
                for (c, &b) in crow.iter_mut().zip(brow) {
                    *c += aiq * b;
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
        let mut acc = 0.0f32;
        for i in 0..n {
            acc += *a.add(i) * *b.add(i);
        }
        acc
    }

    #[inline(always)]
    fn madd(x: f32, y: f32, acc: f32) -> f32 {
        acc + x * y
    }
}

/// Rows of a register tile: 6 rows × 2 vectors are 12 accumulators, which with the two
/// B vectors and one broadcast fill AVX2's 16 registers and keep 12 independent FMA
/// chains in flight (enough to cover the FMA latency on two pipes, where 4 rows' 8 were
/// just enough and left the loads of B and A — 6 per 8 FMAs — close to the limit).
const TILE_ROWS: usize = 6;

macro_rules! simd_tile {
    ($name:ident, $feature:literal, $width:expr,
     $zero:ident, $load:ident, $store:ident, $set1:ident, $fmadd:ident) => {
        #[cfg(target_arch = "x86_64")]
        pub(super) struct $name;

        #[cfg(target_arch = "x86_64")]
        impl Tile for $name {
            #[inline(always)]
            unsafe fn mm(p: Mm) {
                $name::run(p)
            }

            #[inline(always)]
            unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
                $name::dot_fma(a, b, n)
            }

            #[inline(always)]
            fn madd(x: f32, y: f32, acc: f32) -> f32 {
                x.mul_add(y, acc)
            }
        }

        #[cfg(target_arch = "x86_64")]
        impl $name {
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn dot_fma(a: *const f32, b: *const f32, n: usize) -> f32 {
                let mut acc = 0.0f32;
                for i in 0..n {
                    acc = (*a.add(i)).mul_add(*b.add(i), acc);
                }
                acc
            }

            #[target_feature(enable = $feature)]
            unsafe fn run(p: Mm) {
                let mut i = 0;
                while i + TILE_ROWS <= p.m {
                    Self::rows::<TILE_ROWS>(p, i);
                    i += TILE_ROWS;
                }
                match p.m - i {
                    5 => Self::rows::<5>(p, i),
                    4 => Self::rows::<4>(p, i),
                    3 => Self::rows::<3>(p, i),
                    2 => Self::rows::<2>(p, i),
                    1 => Self::rows::<1>(p, i),
                    _ => {}
                }
            }

            /// Rows i..i+R of C: two-vector blocks, a one-vector block, single columns
            /// (those the causal hint leaves, from a whole vector's start; each over its
            /// k range).
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn rows<const R: usize>(p: Mm, i: usize) {
                let (k0, k1, from, n) = p.ranges(i, R);
                let mut j = from / $width * $width;
                while j + 2 * $width <= p.n && j < n {
                    Self::block::<R, 2>(p, i, j, k0, k1);
                    j += 2 * $width;
                }
                if j + $width <= p.n && j < n {
                    Self::block::<R, 1>(p, i, j, k0, k1);
                    j += $width;
                }
                for r in i..i + R {
                    for jj in j..n {
                        let cp = p.c.add(r * p.ldc + jj);
                        let mut acc = if p.add { *cp } else { 0.0 };
                        for q in k0..k1 {
                            let a = *p.a.add(r * p.ars + q * p.acs);
                            acc = a.mul_add(*p.b.add(q * p.brs + jj), acc);
                        }
                        *cp = acc;
                    }
                }
            }

            /// The R × (V·width) tile at (i, j), in registers over k0..k1.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn block<const R: usize, const V: usize>(
                p: Mm,
                i: usize,
                j: usize,
                k0: usize,
                k1: usize,
            ) {
                use std::arch::x86_64::*;
                let mut acc = [[$zero(); V]; R];
                if p.add {
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        for (v, acc_rv) in acc_r.iter_mut().enumerate() {
                            *acc_rv = $load(p.c.add((i + r) * p.ldc + j + v * $width));
                        }
                    }
                }
                let a0 = p.a.add(i * p.ars);
                for q in k0..k1 {
                    let bq = p.b.add(q * p.brs + j);
                    let mut bv = [$zero(); V];
                    for (v, bvv) in bv.iter_mut().enumerate() {
                        *bvv = $load(bq.add(v * $width));
                    }
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let av = $set1(*a0.add(r * p.ars + q * p.acs));
                        for (acc_rv, &b) in acc_r.iter_mut().zip(&bv) {
                            *acc_rv = $fmadd(av, b, *acc_rv);
                        }
                    }
                }
                for (r, acc_r) in acc.iter().enumerate() {
                    for (v, &x) in acc_r.iter().enumerate() {
                        $store(p.c.add((i + r) * p.ldc + j + v * $width), x);
                    }
                }
            }
        }
    };
}

simd_tile!(
    Avx2Fma,
    "avx2,fma",
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps
);

simd_tile!(
    Avx512,
    "avx512f,avx2,fma",
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    /// The one product the hints describe, element by element: a running sum over all
    /// of k in order with `T::madd`, from C's value when adding.
    fn reference<T: Tile>(p: &Mm, a: &[f32], b: &[f32], c0: &[f32]) -> Vec<f32> {
        let mut c = c0.to_vec();
        for i in 0..p.m {
            for j in 0..p.n {
                let mut acc = if p.add { c0[i * p.ldc + j] } else { 0.0 };
                for q in 0..p.k {
                    acc = T::madd(a[i * p.ars + q * p.acs], b[q * p.brs + j], acc);
                }
                c[i * p.ldc + j] = acc;
            }
        }
        c
    }

    /// Whether the hint asks for C(i, j).
    fn wanted(causal: Causal, i: usize, j: usize) -> bool {
        match causal {
            Causal::Cols(off) => j <= i + off,
            Causal::ColsFrom(off) => j + off >= i,
            Causal::KUpTo(_) | Causal::KFrom(_) => true,
        }
    }

    /// Whether A(i, q) may be nonzero under the hint (the K hints' contract).
    fn in_sum(causal: Causal, i: usize, q: usize) -> bool {
        match causal {
            Causal::KUpTo(off) => q <= i + off,
            Causal::KFrom(off) => q + off >= i,
            Causal::Cols(_) | Causal::ColsFrom(_) => true,
        }
    }

    /// Runs `T` on a product with the hint and checks every element it asks for against
    /// [`reference`], bit for bit, and that nothing outside C's m × n (in its padding)
    /// was written.
    fn check<T: Tile>(
        (m, n, k): (usize, usize, usize),
        causal: Causal,
        add: bool,
        a_transposed: bool,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let mut random =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.normal() as f32).collect() };
        // Strided operands with padding past each row, as the attention's blocks are.
        let (ars, acs) = if a_transposed { (1, m + 3) } else { (k + 5, 1) };
        let (brs, ldc) = (n + 7, n + 2);
        let mut a = random(m.max(1) * ars + k * acs);
        for i in 0..m {
            for q in 0..k {
                if !in_sum(causal, i, q) {
                    a[i * ars + q * acs] = 0.0;
                }
            }
        }
        let b = random(k * brs + n);
        let c0 = random(m * ldc);
        let mut c = c0.clone();
        let p = Mm {
            m,
            n,
            k,
            a: a.as_ptr(),
            ars,
            acs,
            b: b.as_ptr(),
            brs,
            c: c.as_mut_ptr(),
            ldc,
            add,
            causal,
        };
        let want = reference::<T>(&p, &a, &b, &c0);
        // SAFETY: every index the product names is inside the buffers (strides above);
        // the caller checked the CPU's features.
        unsafe { T::mm(p) };
        for i in 0..m {
            for j in 0..ldc {
                let (got, e) = (c[i * ldc + j], i * ldc + j);
                if j >= n {
                    assert_eq!(got.to_bits(), c0[e].to_bits(), "padding ({i}, {j}) written");
                } else if wanted(causal, i, j) {
                    assert_eq!(
                        got.to_bits(),
                        want[e].to_bits(),
                        "C({i}, {j}) of {m}×{n}×{k}, {causal:?}, add {add}: {got} vs {}",
                        want[e]
                    );
                }
            }
        }
    }

    fn hint(kind: usize, off: usize) -> Causal {
        match kind {
            0 => Causal::Cols(off),
            1 => Causal::ColsFrom(off),
            2 => Causal::KUpTo(off),
            _ => Causal::KFrom(off),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Every kernel this CPU runs, every hint, tiles that straddle the triangle or lie
        /// wholly on either side of it, ragged edges in all three sizes.
        #[test]
        fn every_hint_keeps_the_bits_of_the_whole_product_where_it_asks(
            m in 1usize..70, n in 1usize..70, k in 1usize..70, kind in 0usize..4,
            off in 0usize..80, add in any::<bool>(), a_transposed in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let causal = hint(kind, off);
            let case = ((m, n, k), causal, add, a_transposed, seed);
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    check::<Avx2Fma>(case.0, case.1, case.2, case.3, case.4);
                }
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                {
                    check::<Avx512>(case.0, case.1, case.2, case.3, case.4);
                }
            }
            // The portable kernel ignores hints: it computes the whole product.
            check::<Portable>(case.0, case.1, case.2, case.3, case.4);
        }
    }
}
