//! The emulator rounds like the hardware where the documents say how the hardware rounds:
//!
//! - `atom`/`red` `.add.f32`: the PTX ISA ("Parallel Synchronization and Communication
//!   Instructions: atom", and `red`): rounds to nearest even; on global memory subnormal
//!   inputs and results are flushed to sign-preserving zero, on shared memory they are kept.
//! - `mma.sync` with f32 accumulation under [`MmaNumerics::Hardware`]: the sm_80 tensor-core
//!   model of MMA-Sim (arXiv 2511.10909), consistent with Fasi, Higham, Mikaitis and Pranesh,
//!   "Numerical behavior of NVIDIA tensor cores" (PeerJ Comput. Sci. 7:e330, 2021): exact
//!   products, k in two groups of 8, each group's addends aligned to its largest exponent
//!   and truncated to 24 fraction bits, summed exactly, the sum truncated to f32; and under
//!   [`MmaNumerics::HardwareSm90`] MMA-Sim's Hopper model of `mma.sync`: one group of 16 and
//!   25 fraction bits. Each case below derives every mode's result by hand;
//!   [`MmaNumerics::Exact`] (one f32 round-to-nearest addition per product, k order) must
//!   stay as it was.
//!
//! Every value here is a power of two or a short sum of them, so the derivations are exact.

use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, MmaNumerics, Module};

const HEADER: &str = ".version 8.0\n.target sm_80\n.address_size 64\n";

fn p2(e: i32) -> f32 {
    f32::powi(2.0, e)
}

/// Runs kernel `name` of `text` over `buf` (one allocation, its address the only
/// parameter) with `checks`; returns the buffer afterwards.
fn run_buffer(text: &str, name: &str, threads: u32, buf: &[u8], checks: &Checks) -> Vec<u8> {
    let module = Module::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut mem = DeviceMemory::new();
    let addr = mem.alloc(buf.len(), "buf");
    mem.write(addr, buf).unwrap_or_else(|e| panic!("{e}"));
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [threads, 1, 1],
        dynamic_shared_bytes: 0,
    };
    launch(&module, name, &dims, &addr.to_le_bytes(), &mut mem, checks)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut out = vec![0u8; buf.len()];
    mem.read(addr, &mut out).unwrap_or_else(|e| panic!("{e}"));
    out
}

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

// ---------------------------------------------------------------------------------------
// atom / red .add.f32

/// One thread per case. Case i has 12 words at `buf + 48 i`: in 0 the old value, in 1 the
/// addend; the kernel writes the value memory holds after `atom.global` (2), `red.global`
/// (3), `atom` through a generic address of global memory (4), `atom.shared` (5),
/// `red.shared` (6), `atom` through a generic address of shared memory (7), and the old
/// value `atom.global` and `atom.shared` returned (8, 9).
const ATOM_KERNEL: &str = r#"
.visible .entry atoms(.param .u64 buf)
{
    .reg .b32 %r<12>;
    .reg .b64 %rd<12>;
    .reg .f32 %f<8>;
    .shared .align 4 .b32 sh[96];
    ld.param.u64 %rd1, [buf];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r0, %tid.x;
    mul.wide.u32 %rd2, %r0, 48;
    add.s64 %rd3, %rd1, %rd2;
    ld.global.b32 %r1, [%rd3];
    ld.global.f32 %f1, [%rd3+4];
    // Global: three slots start at the old value.
    st.global.b32 [%rd3+8], %r1;
    st.global.b32 [%rd3+12], %r1;
    st.global.b32 [%rd3+16], %r1;
    atom.global.add.f32 %f2, [%rd3+8], %f1;
    red.global.add.f32 [%rd3+12], %f1;
    cvta.global.u64 %rd4, %rd3;
    atom.add.f32 %f3, [%rd4+16], %f1;
    st.global.f32 [%rd3+32], %f2;
    // Shared: three slots per thread.
    mov.u32 %r2, sh;
    mul.lo.u32 %r3, %r0, 12;
    add.u32 %r4, %r2, %r3;
    st.shared.b32 [%r4], %r1;
    st.shared.b32 [%r4+4], %r1;
    st.shared.b32 [%r4+8], %r1;
    atom.shared.add.f32 %f4, [%r4], %f1;
    red.shared.add.f32 [%r4+4], %f1;
    cvt.u64.u32 %rd5, %r4;
    cvta.shared.u64 %rd6, %rd5;
    atom.add.f32 %f5, [%rd6+8], %f1;
    ld.shared.b32 %r5, [%r4];
    ld.shared.b32 %r6, [%r4+4];
    ld.shared.b32 %r7, [%r4+8];
    st.global.b32 [%rd3+20], %r5;
    st.global.b32 [%rd3+24], %r6;
    st.global.b32 [%rd3+28], %r7;
    st.global.f32 [%rd3+36], %f4;
    ret;
}
"#;

/// (old, addend, result on global memory, result on shared memory), as f32 bits.
const ATOM_CASES: [(u32, u32, u32, u32, &str); 8] = [
    // 0 + 2^-149: the subnormal addend is flushed on global (+0 + +0 = +0), kept on shared.
    (
        0x0000_0000,
        0x0000_0001,
        0x0000_0000,
        0x0000_0001,
        "+0 + min subnormal",
    ),
    // +0 + −2^-149: flushed to −0; +0 + −0 = +0 in round-to-nearest.
    (
        0x0000_0000,
        0x8000_0001,
        0x0000_0000,
        0x8000_0001,
        "+0 − min subnormal",
    ),
    // −0 + −2^-149: −0 + −0 = −0 (the flush keeps the sign).
    (
        0x8000_0000,
        0x8000_0001,
        0x8000_0000,
        0x8000_0001,
        "−0 − min subnormal",
    ),
    // Subnormal old 2^-128 + 2^-126: flushed, 2^-126; kept, 1.25 · 2^-126.
    (
        0x0020_0000,
        0x0080_0000,
        0x0080_0000,
        0x00A0_0000,
        "subnormal old + min normal",
    ),
    // 1.5 · 2^-126 − 2^-126 = 2^-127, a subnormal result: flushed to +0 on global.
    (
        0x00C0_0000,
        0x8080_0000,
        0x0000_0000,
        0x0040_0000,
        "normal − normal = subnormal",
    ),
    // −1.5 · 2^-126 + 2^-126 = −2^-127: flushed to −0 (sign-preserving).
    (
        0x80C0_0000,
        0x0080_0000,
        0x8000_0000,
        0x8040_0000,
        "negative subnormal result",
    ),
    // Normal values: the same IEEE sum everywhere, 1.5 + 2.25 = 3.75.
    (
        0x3FC0_0000,
        0x4010_0000,
        0x4070_0000,
        0x4070_0000,
        "normal sum",
    ),
    // (1 + 2^-23) + 2^-24: a tie, to even: 1 + 2^-22.
    (
        0x3F80_0001,
        0x3380_0000,
        0x3F80_0002,
        0x3F80_0002,
        "tie to even",
    ),
];

#[test]
fn atom_and_red_add_f32_flush_subnormals_on_global_memory_only() {
    let mut buf = vec![0u8; 48 * ATOM_CASES.len()];
    for (i, &(old, b, _, _, _)) in ATOM_CASES.iter().enumerate() {
        buf[48 * i..48 * i + 4].copy_from_slice(&old.to_le_bytes());
        buf[48 * i + 4..48 * i + 8].copy_from_slice(&b.to_le_bytes());
    }
    let text = format!("{HEADER}{ATOM_KERNEL}");
    let out = words(&run_buffer(
        &text,
        "atoms",
        ATOM_CASES.len() as u32,
        &buf,
        &Checks::default(),
    ));
    for (i, &(old, _, global, shared, what)) in ATOM_CASES.iter().enumerate() {
        let w = &out[12 * i..12 * i + 12];
        for (slot, how) in [
            (2, "atom.global"),
            (3, "red.global"),
            (4, "atom generic→global"),
        ] {
            assert_eq!(w[slot], global, "{what}: {how} {:#010x}", w[slot]);
        }
        for (slot, how) in [
            (5, "atom.shared"),
            (6, "red.shared"),
            (7, "atom generic→shared"),
        ] {
            assert_eq!(w[slot], shared, "{what}: {how} {:#010x}", w[slot]);
        }
        // The old value comes back as memory held it, unflushed.
        assert_eq!(w[8], old, "{what}: value atom.global returned");
        assert_eq!(w[9], old, "{what}: value atom.shared returned");
    }
}

// ---------------------------------------------------------------------------------------
// mma.sync m16n8k16, bf16 inputs, f32 accumulation

/// One warp: lane l reads its fragments from `buf + 40 l` (A's four .b32 registers, B's two,
/// C's four f32) and writes D's four f32 to `buf + 1280 + 16 l`.
const MMA_KERNEL: &str = r#"
.visible .entry mma(.param .u64 buf)
{
    .reg .b32 %r<8>;
    .reg .b64 %rd<8>;
    .reg .f32 %f<10>;
    ld.param.u64 %rd1, [buf];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r0, %tid.x;
    mul.wide.u32 %rd2, %r0, 40;
    add.s64 %rd3, %rd1, %rd2;
    ld.global.b32 %r1, [%rd3];
    ld.global.b32 %r2, [%rd3+4];
    ld.global.b32 %r3, [%rd3+8];
    ld.global.b32 %r4, [%rd3+12];
    ld.global.b32 %r5, [%rd3+16];
    ld.global.b32 %r6, [%rd3+20];
    ld.global.f32 %f1, [%rd3+24];
    ld.global.f32 %f2, [%rd3+28];
    ld.global.f32 %f3, [%rd3+32];
    ld.global.f32 %f4, [%rd3+36];
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f5, %f6, %f7, %f8}, {%r1, %r2, %r3, %r4}, {%r5, %r6}, {%f1, %f2, %f3, %f4};
    mul.wide.u32 %rd4, %r0, 16;
    add.s64 %rd5, %rd1, %rd4;
    st.global.f32 [%rd5+1280], %f5;
    st.global.f32 [%rd5+1284], %f6;
    st.global.f32 [%rd5+1288], %f7;
    st.global.f32 [%rd5+1292], %f8;
    ret;
}
"#;

/// A (16×16), B (16×8) and C (16×8) of one `mma`, most elements zero.
struct Mma {
    a: [[f32; 16]; 16],
    b: [[f32; 8]; 16],
    c: [[f32; 8]; 16],
}

impl Mma {
    fn zero() -> Mma {
        Mma {
            a: [[0.0; 16]; 16],
            b: [[0.0; 8]; 16],
            c: [[0.0; 8]; 16],
        }
    }

    /// Element (row, col) gets `c`, and the products a_k · b_k at the given k (A's row `row`,
    /// B's column `col`).
    fn element(row: usize, col: usize, c: f32, products: &[(usize, f32, f32)]) -> Mma {
        let mut m = Mma::zero();
        m.c[row][col] = c;
        for &(k, x, y) in products {
            m.a[row][k] = x;
            m.b[k][col] = y;
        }
        m
    }

    /// D under `mma` numerics, through the emulator's `mma.sync`. The fragments are placed
    /// with the PTX ISA's formulas ("Matrix Fragments for mma.m16n8k16 with floating point
    /// type"), lane → element, with groupID = lane / 4 and threadID_in_group = lane % 4.
    fn run(&self, mma: MmaNumerics) -> [[f32; 8]; 16] {
        let bf = |x: f32| {
            let h = half::bf16::from_f32(x);
            assert_eq!(h.to_f32().to_bits(), x.to_bits(), "{x} is not a bf16");
            u32::from(h.to_bits())
        };
        let mut buf = vec![0u8; 1280 + 512];
        for lane in 0..32 {
            let (group, tig) = (lane / 4, lane % 4);
            let mut regs = [0u32; 10];
            for i in 0..8 {
                let row = group + if i % 4 >= 2 { 8 } else { 0 };
                let col = tig * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
                regs[i / 2] |= bf(self.a[row][col]) << (16 * (i % 2));
            }
            for i in 0..4 {
                let row = tig * 2 + (i & 1) + if i >= 2 { 8 } else { 0 };
                regs[4 + i / 2] |= bf(self.b[row][group]) << (16 * (i % 2));
            }
            for i in 0..4 {
                let row = group + if i >= 2 { 8 } else { 0 };
                regs[6 + i] = self.c[row][tig * 2 + (i & 1)].to_bits();
            }
            for (j, r) in regs.iter().enumerate() {
                buf[40 * lane + 4 * j..40 * lane + 4 * j + 4].copy_from_slice(&r.to_le_bytes());
            }
        }
        let checks = Checks {
            mma,
            ..Checks::default()
        };
        let out = words(&run_buffer(
            &format!("{HEADER}{MMA_KERNEL}"),
            "mma",
            32,
            &buf,
            &checks,
        ));
        let mut d = [[0f32; 8]; 16];
        for lane in 0..32 {
            let (group, tig) = (lane / 4, lane % 4);
            for i in 0..4 {
                let row = group + if i >= 2 { 8 } else { 0 };
                d[row][tig * 2 + (i & 1)] = f32::from_bits(out[320 + 4 * lane + i]);
            }
        }
        d
    }
}

/// Runs a one-element case in every mode; asserts D[row][col] bit for bit in each (`want`:
/// exact, sm_80, sm_90), and that every other element is +0.
#[track_caller]
fn check_element(
    what: &str,
    (row, col): (usize, usize),
    c: f32,
    products: &[(usize, f32, f32)],
    [exact, sm80, sm90]: [f32; 3],
) {
    let m = Mma::element(row, col, c, products);
    for (mma, want) in [
        (MmaNumerics::Exact, exact),
        (MmaNumerics::Hardware, sm80),
        (MmaNumerics::HardwareSm90, sm90),
    ] {
        let d = m.run(mma);
        for (r, d_row) in d.iter().enumerate() {
            for (n, &v) in d_row.iter().enumerate() {
                let want = if (r, n) == (row, col) { want } else { 0.0 };
                assert_eq!(
                    v.to_bits(),
                    want.to_bits(),
                    "{what} ({mma:?}): D[{r}][{n}] = {v:e}, want {want:e}"
                );
            }
        }
    }
}

#[test]
fn tiny_products_before_a_large_one_are_truncated_away() {
    // Seven products 2^-13 · 2^-12 = 2^-25 at k = 0..6, then 1 · 1 at k = 7; C = 0; exact sum
    // 1 + 7 · 2^-25. Exact: the tiny ones add exactly to 7 · 2^-25, then 1 + 7 · 2^-25 =
    // 1 + 1.75 · 2^-23 rounds to nearest, 1 + 2^-22. sm_80: one group, aligned to 1
    // (exponent 0), units 2^-24: each 2^-25 truncates to 0, D = 1. sm_90: units 2^-25 keep
    // all seven; 1 + 1.75 · 2^-23 truncates to 1 + 2^-23.
    let mut products: Vec<(usize, f32, f32)> = (0..7).map(|k| (k, p2(-13), p2(-12))).collect();
    products.push((7, 1.0, 1.0));
    check_element(
        "seven 2^-25 then 1",
        (5, 3),
        0.0,
        &products,
        [1.0 + p2(-22), 1.0, 1.0 + p2(-23)],
    );
}

#[test]
fn the_result_is_truncated_not_rounded() {
    // 1 · 2 + 1 · (2^-23 + 2^-24) (Fasi et al.'s round-down test), C = 0. Exact: 2 +
    // 1.5 · 2^-23 rounds to nearest at exponent 1 (ulp 2^-22): 2 + 2^-22. Hardware: aligned
    // to exponent 1, units 2^-23: the small product keeps ⌊1.5⌋ = 1 unit; 2 + 2^-23
    // truncates to f32 at exponent 1: 2. Negated: −2 (toward zero, not down). sm_90: units
    // 2^-24 keep all 3 of them, and 2 + 0.75 · 2^-22 truncates to 2 all the same.
    let small = p2(-23) + p2(-24);
    check_element(
        "2 + 1.5·2^-23",
        (0, 0),
        0.0,
        &[(0, 1.0, 2.0), (1, 1.0, small)],
        [2.0 + p2(-22), 2.0, 2.0],
    );
    check_element(
        "−2 − 1.5·2^-23",
        (15, 7),
        0.0,
        &[(0, 1.0, -2.0), (1, 1.0, -small)],
        [-2.0 - p2(-22), -2.0, -2.0],
    );
}

#[test]
fn normalisation_happens_once_per_group() {
    // C = 1 + 2^-22 + 2^-23 and four products 1 · 1 (Fasi et al.'s carry-out test): exact
    // 5 + 3 · 2^-23. Exact, k order: C + 1 = 2 + 1.5 · 2^-22 ties to 2 + 2^-21; + 1, + 1,
    // + 1 stay exact: 5 + 2^-21. Hardware: every addend aligned to exponent 0 and kept,
    // the exact sum truncated at exponent 2 (ulp 2^-21): 5. sm_90 likewise.
    let c = 1.0 + p2(-22) + p2(-23);
    let ones: Vec<(usize, f32, f32)> = (0..4).map(|k| (k, 1.0, 1.0)).collect();
    check_element("4 + C", (9, 2), c, &ones, [5.0 + p2(-21), 5.0, 5.0]);
}

#[test]
fn cancellation_loses_what_alignment_dropped() {
    // 2^10 · 2^10 − 2^10 · 2^10 + 2^-5 · 1 at k = 0, 1, 2 (one group), C = 0: exact 2^-5.
    // Exact, k order: 2^20 − 2^20 = 0, then + 2^-5 = 2^-5. sm_80: aligned to 2^20, units
    // 2^-4: 2^-5 is half a unit and truncates to 0; the large ones cancel: D = +0. sm_90:
    // units 2^-5 keep it: 2^-5.
    check_element(
        "2^20 − 2^20 + 2^-5, one group",
        (3, 6),
        0.0,
        &[(0, p2(10), p2(10)), (1, p2(10), -p2(10)), (2, p2(-5), 1.0)],
        [p2(-5), 0.0, p2(-5)],
    );
    // The same with 2^-5 at k = 8: on sm_80 the second group starts from the first's
    // result, +0, so it aligns to 2^-5 itself and keeps it: the groups are k 0..8 and 8..16.
    check_element(
        "2^20 − 2^20, then 2^-5 in the second group",
        (3, 6),
        0.0,
        &[(0, p2(10), p2(10)), (1, p2(10), -p2(10)), (8, p2(-5), 1.0)],
        [p2(-5), p2(-5), p2(-5)],
    );
    // And with the cancelling pair split across sm_80's groups, 2^-5 in the first: the first
    // group gives 2^20 (2^-5 truncated), the second 2^20 − 2^20 = +0. Exact, k order:
    // 2^20 + 2^-5 rounds to 2^20 (ulp 2^-3), then 0. sm_90 adds all 16 at once, in units of
    // 2^-5: 2^-5. Only one k group tells sm_90 from sm_80 here.
    check_element(
        "2^20 and 2^-5, then −2^20 in the second group",
        (3, 6),
        0.0,
        &[(0, p2(10), p2(10)), (1, p2(-5), 1.0), (8, p2(10), -p2(10))],
        [0.0, 0.0, p2(-5)],
    );
}

#[test]
fn alignment_keeps_one_bit_beyond_f32() {
    // 1 · 1 − (1 − 2^-24) (Fasi et al.'s extra-bit test): C has exponent −1 and needs 24
    // fraction bits at exponent 0, which sm_80 (24) and sm_90 (25) keep: D = 2^-24 in every
    // mode (a model keeping f32's 23 bits would give 2^-23).
    check_element(
        "1 − (1 − 2^-24)",
        (8, 4),
        -(1.0 - p2(-24)),
        &[(15, 1.0, 1.0)],
        [p2(-24), p2(-24), p2(-24)],
    );
}

#[test]
fn hardware_accumulation_is_not_monotonic_in_c() {
    // Fasi et al.'s monotonicity test: products 3 × 0.5 · 2^-24 and 0.5 · (2^-23 + 2^-24) at
    // k = 0..3. With C = 1 − 2^-24 (exponent −1, units 2^-25) every product survives:
    // 1 − 2^-24 + 6 · 2^-25 = 1 + 2^-23. With C = 1 (units 2^-24) the 2^-25 vanish,
    // 1.5 · 2^-24 keeps one unit, and 1 + 2^-24 truncates to 1: a larger C, a smaller D.
    // Exact (k order, onto C): (1 − 2^-24) + 2^-25 is half an ulp (2^-24 at exponent −1)
    // below 1, a tie that goes to the even 1; then each 2^-25 is a quarter ulp of 1 (lost)
    // and 1.5 · 2^-24 is 0.75 ulp (rounds up): 1 + 2^-23. From C = 1 the same last steps:
    // 1 + 2^-23. Round to nearest is monotonic; the truncating sum is not. sm_90's 25 bits
    // keep every product from C = 1 too (units 2^-25): 1 + 1.5 · 2^-23 truncates to
    // 1 + 2^-23, so this case does not show it there.
    let products = [
        (0, 0.5, p2(-24)),
        (1, 0.5, p2(-24)),
        (2, 0.5, p2(-24)),
        (3, 0.5, p2(-23) + p2(-24)),
    ];
    check_element(
        "C = 1 − 2^-24",
        (1, 1),
        1.0 - p2(-24),
        &products,
        [1.0 + p2(-23); 3],
    );
    check_element(
        "C = 1",
        (1, 1),
        1.0,
        &products,
        [1.0 + p2(-23), 1.0, 1.0 + p2(-23)],
    );
}

#[test]
fn nan_results_are_canonical_in_both_modes() {
    // ∞ · 0 (invalid), a NaN input with a payload and the sign set, a NaN C with a payload:
    // each output is 0x7FFF_FFFF; ∞ · 1 + C stays ∞.
    let mut m = Mma::zero();
    m.a[0][0] = f32::INFINITY;
    m.b[0][1] = 1.0; // D[0][1] = ∞; D[0][0] = ∞ · 0 = NaN
    m.a[2][5] = f32::from_bits(0xFFC1_0000); // a bf16 NaN (low half zero): row 2 is NaN where B's k=5 row is used
    m.b[5][3] = 2.0;
    m.c[4][4] = f32::from_bits(0x7F80_0001);
    for mma in MmaNumerics::ALL {
        let d = m.run(mma);
        assert_eq!(d[0][1], f32::INFINITY, "{mma:?}");
        for (r, n) in [(0, 0), (0, 7), (2, 0), (2, 3), (4, 4)] {
            assert_eq!(d[r][n].to_bits(), 0x7FFF_FFFF, "{mma:?} D[{r}][{n}]");
        }
        assert_eq!(d[1][0].to_bits(), 0, "{mma:?}");
    }
}

#[test]
fn mma_numerics_names_and_defaults() {
    assert_eq!(Checks::default().mma, MmaNumerics::Exact);
    assert_eq!(Checks::none().mma, MmaNumerics::Exact);
    assert_eq!(MmaNumerics::default(), MmaNumerics::Exact);
    for m in MmaNumerics::ALL {
        assert_eq!(MmaNumerics::from_name(m.name()), Some(m));
    }
    assert_eq!(
        MmaNumerics::from_name("HARDWARE-SM80"),
        Some(MmaNumerics::Hardware)
    );
    assert_eq!(
        MmaNumerics::from_name(" Hardware\n"),
        Some(MmaNumerics::Hardware)
    );
    assert_eq!(MmaNumerics::from_name("rn"), None);
    assert_eq!(MmaNumerics::from_name(""), None);
    assert_eq!(MmaNumerics::ENV, "FRUGAL_EMU_MMA");
}
