//! `util.ptx` (fill_f32, scale_f32, cast_f32_bf16, cast_bf16_f32): launch specs and a case
//! that runs all four on `n` elements at a byte offset (0: 16-byte aligned, the vector body
//! and scalar tail; 4: the all-scalar path), checking bits exactly (each kernel is one
//! IEEE-rounded operation or a copy per element) and that nothing outside the range changed.

use super::{download, upload, Gen, Runner};
use crate::emu::LaunchDims;
use crate::kernels::{KernelSpec, Launch, FLAT_BLOCK, MAX_FLAT_GRID};
use crate::launch::{Arg, ParamKind::*};

/// `fill_f32(ptr, n, value)`.
pub static FILL_F32: KernelSpec = KernelSpec {
    module: "util",
    kernel: "fill_f32",
    params: &[("ptr", Ptr), ("n", U64), ("value", F32)],
};
/// `scale_f32(ptr, n, s)`.
pub static SCALE_F32: KernelSpec = KernelSpec {
    module: "util",
    kernel: "scale_f32",
    params: &[("ptr", Ptr), ("n", U64), ("s", F32)],
};
/// `cast_f32_bf16(src, dst, n)`.
pub static CAST_F32_BF16: KernelSpec = KernelSpec {
    module: "util",
    kernel: "cast_f32_bf16",
    params: &[("src", Ptr), ("dst", Ptr), ("n", U64)],
};
/// `cast_bf16_f32(src, dst, n)`.
pub static CAST_BF16_F32: KernelSpec = KernelSpec {
    module: "util",
    kernel: "cast_bf16_f32",
    params: &[("src", Ptr), ("dst", Ptr), ("n", U64)],
};

/// Every util spec.
pub static SPECS: &[&KernelSpec] = &[&FILL_F32, &SCALE_F32, &CAST_F32_BF16, &CAST_BF16_F32];

/// The grid util.ptx documents: ceil(n / (per_thread * block)) CTAs of [`FLAT_BLOCK`],
/// capped (the kernels are grid-stride loops).
fn dims(n: usize, per_thread: u64) -> LaunchDims {
    let per_cta = per_thread * u64::from(FLAT_BLOCK);
    LaunchDims {
        grid: [
            (n as u64).div_ceil(per_cta).clamp(1, MAX_FLAT_GRID) as u32,
            1,
            1,
        ],
        block: [FLAT_BLOCK, 1, 1],
        dynamic_shared_bytes: 0,
    }
}

fn launch(spec: &KernelSpec, n: usize, per_thread: u64, args: &[Arg]) -> Launch {
    spec.launch(dims(n, per_thread), args)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Cast inputs: random values plus, every 97 elements, the cases rounding gets wrong first.
fn cast_inputs(g: &mut Gen, n: usize) -> Vec<f32> {
    let special = [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x3F80_8000), // a tie: rounds to even (1.0)
        f32::from_bits(0x3F81_8000), // a tie that rounds up to even
        f32::from_bits(0x3F80_8001), // just above a tie: rounds up
    ];
    (0..n)
        .map(|i| {
            special
                .get(i % 97)
                .copied()
                .unwrap_or_else(|| g.unit() * 1.0e3)
        })
        .collect()
}

/// Runs scale, fill and both casts on `n` elements at `offset` bytes (0 or 4) into buffers
/// of `n + 8` elements, and checks every element bit for bit.
pub fn case(r: &mut dyn Runner, n: usize, offset: u64, seed: u64) {
    assert!(offset.is_multiple_of(4) && offset <= 16, "offset {offset}");
    let mut g = Gen(seed);
    let first = (offset / 4) as usize;
    let inside = |i: usize| (first..first + n).contains(&i);
    let total = n + 8;
    let nn = n as u64;

    // scale then fill, in place on f32.
    let input: Vec<f32> = (0..total).map(|_| g.unit() * 100.0).collect();
    let x = upload(r, &input, "x");
    r.run(&launch(
        &SCALE_F32,
        n,
        4,
        &[Arg::Ptr(x + offset), Arg::U64(nn), Arg::F32(0.375)],
    ));
    let scaled: Vec<f32> = download(r, x, total);
    for (i, (&a, &y)) in input.iter().zip(&scaled).enumerate() {
        // One f32 multiply (mul.rn), the same rounding Rust does.
        let want = if inside(i) { a * 0.375 } else { a };
        assert_eq!(
            y.to_bits(),
            want.to_bits(),
            "scale_f32 n={n} +{offset}: x[{i}]"
        );
    }
    r.run(&launch(
        &FILL_F32,
        n,
        4,
        &[Arg::Ptr(x + offset), Arg::U64(nn), Arg::F32(-2.5)],
    ));
    let filled: Vec<f32> = download(r, x, total);
    for (i, (&a, &y)) in scaled.iter().zip(&filled).enumerate() {
        let want = if inside(i) { -2.5 } else { a };
        assert_eq!(
            y.to_bits(),
            want.to_bits(),
            "fill_f32 n={n} +{offset}: x[{i}]"
        );
    }

    // f32 -> bf16: round to nearest even, NaN stays NaN. Both sides move by offset/4
    // elements (4 bytes on the f32 side, 2 on the bf16 side: unaligned when offset > 0).
    let src = cast_inputs(&mut g, total);
    let src_d = upload(r, &src, "cast src f32");
    let dst_d = upload(r, &vec![0x5555u16; total], "cast dst bf16");
    r.run(&launch(
        &CAST_F32_BF16,
        n,
        4,
        &[
            Arg::Ptr(src_d + offset),
            Arg::Ptr(dst_d + offset / 2),
            Arg::U64(nn),
        ],
    ));
    let got: Vec<u16> = download(r, dst_d, total);
    for (i, &bits) in got.iter().enumerate() {
        if !inside(i) {
            assert_eq!(bits, 0x5555, "cast_f32_bf16 wrote outside its range at {i}");
        } else if src[i].is_nan() {
            assert!(
                half::bf16::from_bits(bits).is_nan(),
                "NaN must stay NaN at {i}"
            );
        } else {
            let want = half::bf16::from_f32(src[i]).to_bits();
            assert_eq!(bits, want, "cast_f32_bf16 of {:e} at {i}", src[i]);
        }
    }

    // bf16 -> f32 is exact: the same bits in the top half, NaN payloads included.
    let mut src: Vec<u16> = (0..total).map(|_| (g.next_u64() >> 48) as u16).collect();
    for (i, bits) in [
        0x0000u16, 0x8000, 0x0001, 0x807F, 0x3F80, 0x7F80, 0xFF80, 0x7FC1,
    ]
    .into_iter()
    .enumerate()
    {
        if let Some(slot) = src.get_mut(i + 3) {
            *slot = bits;
        }
    }
    let src_d = upload(r, &src, "cast src bf16");
    let dst_d = upload(r, &vec![0x5555_5555u32; total], "cast dst f32");
    r.run(&launch(
        &CAST_BF16_F32,
        n,
        8,
        &[
            Arg::Ptr(src_d + offset / 2),
            Arg::Ptr(dst_d + offset),
            Arg::U64(nn),
        ],
    ));
    let got: Vec<u32> = download(r, dst_d, total);
    for (i, &bits) in got.iter().enumerate() {
        let want = if inside(i) {
            u32::from(src[i]) << 16
        } else {
            0x5555_5555
        };
        assert_eq!(bits, want, "cast_bf16_f32 n={n} +{offset}: element {i}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_match_the_shipped_text() {
        crate::testing::assert_specs_match_shipped(SPECS);
    }
}
