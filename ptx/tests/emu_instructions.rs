//! Per-instruction-family tests of the PTX emulator against independently computed values.
//!
//! Each test runs a one-instruction (or few-instruction) kernel over many input cases, one
//! thread per case, and compares with values computed here in Rust by other means: Rust's
//! own IEEE f32/f64 arithmetic, the `half` crate's conversions, u128/i128 integer
//! arithmetic, bit-stepping from a round-to-nearest result to the directed roundings, and
//! hand-computed bit patterns.

use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, Module};

const HEADER: &str = ".version 8.0\n.target sm_80\n.address_size 64\n";

/// Wraps `body` into a kernel that runs once per case. Each case is three 64-bit inputs,
/// loaded as `%rd10..%rd12` (u64), `%r10..%r12` (low 32 bits), `%f10..%f12` (f32 of the
/// low 32 bits), `%fd10..%fd12` (f64) and `%h10..%h12` (low 16 bits). The body stores its
/// results at `[%rd5]` and `[%rd5+8]` (two 8-byte slots per case, zero-initialised).
fn case_kernel(body: &str) -> String {
    format!(
        "{HEADER}
.visible .entry t(.param .u64 pin, .param .u64 pout, .param .u32 n)
{{
    .reg .pred %p<8>;
    .reg .b16 %h<16>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<16>;
    .reg .f32 %f<16>;
    .reg .f64 %fd<16>;
    ld.param.u64 %rd1, [pin];
    ld.param.u64 %rd2, [pout];
    ld.param.u32 %r1, [n];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.s32 %r0, %r2, %r3, %r4;
    setp.ge.u32 %p0, %r0, %r1;
    @%p0 bra DONE;
    mul.wide.u32 %rd3, %r0, 24;
    add.s64 %rd4, %rd1, %rd3;
    mul.wide.u32 %rd3, %r0, 16;
    add.s64 %rd5, %rd2, %rd3;
    ld.global.u64 %rd10, [%rd4];
    ld.global.u64 %rd11, [%rd4+8];
    ld.global.u64 %rd12, [%rd4+16];
    ld.global.b32 %r10, [%rd4];
    ld.global.b32 %r11, [%rd4+8];
    ld.global.b32 %r12, [%rd4+16];
    ld.global.f32 %f10, [%rd4];
    ld.global.f32 %f11, [%rd4+8];
    ld.global.f32 %f12, [%rd4+16];
    ld.global.f64 %fd10, [%rd4];
    ld.global.f64 %fd11, [%rd4+8];
    ld.global.f64 %fd12, [%rd4+16];
    ld.global.b16 %h10, [%rd4];
    ld.global.b16 %h11, [%rd4+8];
    ld.global.b16 %h12, [%rd4+16];
{body}
DONE:
    ret;
}}
"
    )
}

/// Runs `body` over `cases`; returns the two output slots of each case.
fn run_cases(body: &str, cases: &[[u64; 3]]) -> Vec<[u64; 2]> {
    let text = case_kernel(body);
    let module = match Module::parse(&text) {
        Ok(m) => m,
        Err(e) => panic!("kernel does not parse: {e}\n{body}"),
    };
    let mut mem = DeviceMemory::new();
    let n = cases.len().max(1);
    let input = mem.alloc(24 * n, "input");
    let output = mem.alloc(16 * n, "output");
    let bytes: Vec<u8> = cases
        .iter()
        .flat_map(|c| c.iter().flat_map(|v| v.to_le_bytes()))
        .collect();
    mem.write(input, &bytes).unwrap();
    let mut params = Vec::new();
    params.extend_from_slice(&input.to_le_bytes());
    params.extend_from_slice(&output.to_le_bytes());
    params.extend_from_slice(&(cases.len() as u32).to_le_bytes());
    let dims = LaunchDims {
        grid: [n.div_ceil(128) as u32, 1, 1],
        block: [128, 1, 1],
        dynamic_shared_bytes: 0,
    };
    if let Err(e) = launch(&module, "t", &dims, &params, &mut mem, &Checks::default()) {
        panic!("launch failed: {e}\n{body}");
    }
    let mut out = vec![0u8; 16 * n];
    mem.read(output, &mut out).unwrap();
    out.chunks(16)
        .take(cases.len())
        .map(|c| {
            [
                u64::from_le_bytes(c[..8].try_into().unwrap()),
                u64::from_le_bytes(c[8..].try_into().unwrap()),
            ]
        })
        .collect()
}

/// Asserts that `body` produces `expect(case)` in slot 0 for every case.
fn check(body: &str, cases: &[[u64; 3]], expect: impl Fn([u64; 3]) -> u64) {
    let got = run_cases(body, cases);
    for (c, g) in cases.iter().zip(&got) {
        let want = expect(*c);
        assert_eq!(
            g[0],
            want,
            "`{}` on {:#x?}: got {:#x}, expected {:#x}",
            body.trim(),
            c,
            g[0],
            want
        );
    }
}

/// Like [`check`] for f32 results: bit-exact, except that any NaN matches any NaN.
fn check_f32(body: &str, cases: &[[u64; 3]], expect: impl Fn([u64; 3]) -> f32) {
    let got = run_cases(body, cases);
    for (c, g) in cases.iter().zip(&got) {
        let want = expect(*c);
        let g32 = f32::from_bits(g[0] as u32);
        let ok = if want.is_nan() {
            g32.is_nan()
        } else {
            g[0] as u32 == want.to_bits()
        };
        assert!(
            ok,
            "`{}` on {:#x?}: got {g32:e} ({:#x}), expected {want:e} ({:#x})",
            body.trim(),
            c,
            g[0],
            want.to_bits()
        );
    }
}

/// Deterministic generator (splitmix64).
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Integer cases: random values mixed with edge values.
fn int_cases(seed: u64, n: usize) -> Vec<[u64; 3]> {
    let edges = [
        0u64,
        1,
        2,
        31,
        32,
        33,
        63,
        64,
        0x7FFF_FFFF,
        0x8000_0000,
        0xFFFF_FFFF,
        u64::MAX,
        0x8000_0000_0000_0000,
        0x7FFF_FFFF_FFFF_FFFF,
    ];
    let mut g = Gen(seed);
    let mut out = Vec::new();
    for &a in &edges {
        for &b in &edges {
            out.push([a, b, g.next()]);
        }
    }
    for _ in 0..n {
        let pick = |g: &mut Gen| {
            let r = g.next();
            match r % 4 {
                0 => edges[(r >> 8) as usize % edges.len()],
                1 => r >> 40,
                _ => g.next(),
            }
        };
        out.push([pick(&mut g), pick(&mut g), pick(&mut g)]);
    }
    out
}

/// f32 bit patterns covering zeros, subnormals, normals, infinities and NaNs.
fn f32_specials() -> Vec<u32> {
    vec![
        0,
        0x8000_0000,
        1,
        0x8000_0001,
        0x007F_FFFF,
        0x0080_0000,
        0x3F80_0000,
        0xBF80_0000,
        0x4000_0000,
        0x3F00_0000,
        0x7F7F_FFFF,
        0xFF7F_FFFF,
        0x7F80_0000,
        0xFF80_0000,
        0x7FC0_0000,
        0x7F80_0001,
        0x3EAA_AAAB,
        0x4049_0FDB,
        0x4B80_0000,
        0x3380_0000,
        0x0000_0010,
        0x477F_E000,
        0x477F_F000,
        0x3F80_8000,
        0x3F81_8000,
    ]
}

fn f32_cases(seed: u64, n: usize) -> Vec<[u64; 3]> {
    let sp = f32_specials();
    let mut g = Gen(seed);
    let mut out = Vec::new();
    for &a in &sp {
        for &b in &sp {
            out.push([
                u64::from(a),
                u64::from(b),
                u64::from(sp[(g.next() % sp.len() as u64) as usize]),
            ]);
        }
    }
    for _ in 0..n {
        // Random bits, and random values of moderate range (so sums are interesting).
        let r = g.next();
        let v = |g: &mut Gen| -> u64 {
            if r & 1 == 0 {
                g.next() & 0xFFFF_FFFF
            } else {
                let x = ((g.next() >> 11) as f64 / (1u64 << 53) as f64 - 0.5)
                    * 2f64.powi((g.next() % 40) as i32 - 20);
                u64::from((x as f32).to_bits())
            }
        };
        out.push([v(&mut g), v(&mut g), v(&mut g)]);
    }
    out
}

fn f(c: u64) -> f32 {
    f32::from_bits(c as u32)
}

// ---------------------------------------------------------------- integer arithmetic

#[test]
fn int32_add_sub_mul() {
    let cases = int_cases(1, 300);
    let a = |c: [u64; 3]| c[0] as u32;
    let b = |c: [u64; 3]| c[1] as u32;
    check(
        "add.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).wrapping_add(b(c))),
    );
    check(
        "sub.u32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).wrapping_sub(b(c))),
    );
    check(
        "mul.lo.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).wrapping_mul(b(c))),
    );
    check(
        "mul.hi.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(((i64::from(a(c) as i32) * i64::from(b(c) as i32)) >> 32) as u32),
    );
    check(
        "mul.hi.u32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| (u64::from(a(c)) * u64::from(b(c))) >> 32,
    );
    check(
        "mul.wide.s32 %rd6, %r10, %r11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| (i64::from(a(c) as i32) * i64::from(b(c) as i32)) as u64,
    );
    check(
        "mul.wide.u32 %rd6, %r10, %r11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| u64::from(a(c)) * u64::from(b(c)),
    );
    check(
        "mad.lo.s32 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).wrapping_mul(b(c)).wrapping_add(c[2] as u32)),
    );
    check(
        "mad.hi.u32 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            u64::from(
                (((u64::from(a(c)) * u64::from(b(c))) >> 32) as u32).wrapping_add(c[2] as u32),
            )
        },
    );
    check(
        "mad.wide.s32 %rd6, %r10, %r11, %rd12; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| (i64::from(a(c) as i32) * i64::from(b(c) as i32)).wrapping_add(c[2] as i64) as u64,
    );
    check(
        "add.sat.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) as i32).saturating_add(b(c) as i32) as u32),
    );
    check(
        "sub.sat.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) as i32).saturating_sub(b(c) as i32) as u32),
    );
}

#[test]
fn int64_add_mul_hi() {
    let cases = int_cases(2, 300);
    check(
        "add.s64 %rd6, %rd10, %rd11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| c[0].wrapping_add(c[1]),
    );
    check(
        "mul.lo.u64 %rd6, %rd10, %rd11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| c[0].wrapping_mul(c[1]),
    );
    check(
        "mul.hi.u64 %rd6, %rd10, %rd11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| ((u128::from(c[0]) * u128::from(c[1])) >> 64) as u64,
    );
    check(
        "mul.hi.s64 %rd6, %rd10, %rd11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| ((i128::from(c[0] as i64) * i128::from(c[1] as i64)) >> 64) as u64,
    );
    check(
        "mad.lo.s64 %rd6, %rd10, %rd11, %rd12; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| c[0].wrapping_mul(c[1]).wrapping_add(c[2]),
    );
    check(
        "min.s64 %rd6, %rd10, %rd11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| (c[0] as i64).min(c[1] as i64) as u64,
    );
    check(
        "max.u64 %rd6, %rd10, %rd11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| c[0].max(c[1]),
    );
}

#[test]
fn int_div_rem_min_max_abs_neg() {
    // Division by zero is undefined in PTX: those cases are left out.
    let cases: Vec<[u64; 3]> = int_cases(3, 300)
        .into_iter()
        .filter(|c| c[1] as u32 != 0 && !(c[0] as u32 == 0x8000_0000 && c[1] as u32 == u32::MAX))
        .collect();
    let a = |c: [u64; 3]| c[0] as u32;
    let b = |c: [u64; 3]| c[1] as u32;
    check(
        "div.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(((a(c) as i32) / (b(c) as i32)) as u32),
    );
    check(
        "rem.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(((a(c) as i32) % (b(c) as i32)) as u32),
    );
    check(
        "div.u32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) / b(c)),
    );
    check(
        "rem.u32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) % b(c)),
    );
    check(
        "min.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) as i32).min(b(c) as i32) as u32),
    );
    check(
        "max.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) as i32).max(b(c) as i32) as u32),
    );
    check(
        "min.u32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).min(b(c))),
    );
    check(
        "abs.s32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) as i32).wrapping_abs() as u32),
    );
    check(
        "neg.s32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) as i32).wrapping_neg() as u32),
    );
    check(
        "div.s64 %rd6, %rd10, %rd11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| (c[0] as i64).wrapping_div(c[1] as i64) as u64,
    );
}

#[test]
fn int_logic_and_shifts() {
    let cases = int_cases(4, 300);
    let a = |c: [u64; 3]| c[0] as u32;
    let b = |c: [u64; 3]| c[1] as u32;
    check(
        "and.b32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) & b(c)),
    );
    check(
        "or.b32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) | b(c)),
    );
    check(
        "xor.b32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) ^ b(c)),
    );
    check(
        "not.b32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(!a(c)),
    );
    check(
        "cnot.b32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) == 0),
    );
    // Shift amounts of 32 and more: shl/shr.u give 0, shr.s gives the sign fill.
    let sh = |c: [u64; 3]| (c[1] & 0x3F) as u32;
    check(
        "and.b32 %r6, %r11, 63; shl.b32 %r5, %r10, %r6; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).checked_shl(sh(c)).unwrap_or(0)),
    );
    check(
        "and.b32 %r6, %r11, 63; shr.u32 %r5, %r10, %r6; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).checked_shr(sh(c)).unwrap_or(0)),
    );
    check(
        "and.b32 %r6, %r11, 63; shr.s32 %r5, %r10, %r6; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(((a(c) as i32) >> sh(c).min(31)) as u32),
    );
    check(
        "and.b32 %r6, %r11, 127; shl.b64 %rd6, %rd10, %r6; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| c[0].checked_shl((c[1] & 127) as u32).unwrap_or(0),
    );
    check(
        "and.b32 %r6, %r11, 127; shr.s64 %rd6, %rd10, %r6; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| ((c[0] as i64) >> (c[1] & 127).min(63)) as u64,
    );
    check(
        "popc.b32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).count_ones()),
    );
    check(
        "clz.b32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).leading_zeros()),
    );
    check(
        "brev.b32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).reverse_bits()),
    );
    check(
        "popc.b64 %r5, %rd10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(c[0].count_ones()),
    );
    check(
        "clz.b64 %r5, %rd10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(c[0].leading_zeros()),
    );
    // Predicate logic.
    check(
        "setp.ne.u32 %p1, %r10, 0; setp.ne.u32 %p2, %r11, 0; xor.pred %p3, %p1, %p2; not.pred %p4, %p3; selp.u32 %r5, 1, 0, %p4; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) != 0) == (b(c) != 0)),
    );
}

#[test]
fn lop3_prmt_bfe_bfi() {
    let cases = int_cases(5, 200);
    let (a, b, cc) = (
        |c: [u64; 3]| c[0] as u32,
        |c: [u64; 3]| c[1] as u32,
        |c: [u64; 3]| c[2] as u32,
    );
    // Lookup tables are F(0xF0, 0xCC, 0xAA) of the function they implement.
    check(
        "lop3.b32 %r5, %r10, %r11, %r12, 0x80; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) & b(c) & cc(c)),
    );
    check(
        "lop3.b32 %r5, %r10, %r11, %r12, 0x96; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) ^ b(c) ^ cc(c)),
    );
    check(
        "lop3.b32 %r5, %r10, %r11, %r12, 0xE8; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) & b(c)) | (a(c) & cc(c)) | (b(c) & cc(c))),
    );
    check(
        "lop3.b32 %r5, %r10, %r11, %r12, 0xFE; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) | b(c) | cc(c)),
    );
    check(
        "lop3.b32 %r5, %r10, %r11, %r12, 0x0F; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(!a(c)),
    );
    check(
        "lop3.b32 %r5, %r10, %r11, %r12, 0xCA; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) & b(c)) | (!a(c) & cc(c))),
    );
    // prmt generic mode: byte selectors, with sign replication when bit 3 is set.
    check(
        "prmt.b32 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            let bytes: Vec<u8> = a(c)
                .to_le_bytes()
                .into_iter()
                .chain(b(c).to_le_bytes())
                .collect();
            let mut out = [0u8; 4];
            for (i, o) in out.iter_mut().enumerate() {
                let sel = (cc(c) >> (4 * i)) & 0xF;
                let byte = bytes[(sel & 7) as usize];
                *o = if sel & 8 != 0 {
                    if byte & 0x80 != 0 {
                        0xFF
                    } else {
                        0
                    }
                } else {
                    byte
                };
            }
            u64::from(u32::from_le_bytes(out))
        },
    );
    let fixed = vec![[0x3322_1100u64, 0x7766_5544, 0]];
    check(
        "prmt.b32 %r5, %r10, %r11, 0x5140; st.global.b32 [%rd5], %r5;",
        &fixed,
        |_| 0x5511_4400,
    );
    check(
        "prmt.b32.f4e %r5, %r10, %r11, 1; st.global.b32 [%rd5], %r5;",
        &fixed,
        |_| 0x4433_2211,
    );
    check(
        "prmt.b32.b4e %r5, %r10, %r11, 0; st.global.b32 [%rd5], %r5;",
        &fixed,
        |_| 0x5566_7700,
    );
    check(
        "prmt.b32.rc8 %r5, %r10, %r11, 2; st.global.b32 [%rd5], %r5;",
        &fixed,
        |_| 0x2222_2222,
    );
    check(
        "prmt.b32.ecl %r5, %r10, %r11, 1; st.global.b32 [%rd5], %r5;",
        &fixed,
        |_| 0x3322_1111,
    );
    check(
        "prmt.b32.ecr %r5, %r10, %r11, 2; st.global.b32 [%rd5], %r5;",
        &fixed,
        |_| 0x2222_1100,
    );
    check(
        "prmt.b32.rc16 %r5, %r10, %r11, 1; st.global.b32 [%rd5], %r5;",
        &fixed,
        |_| 0x3322_3322,
    );
    // bfe/bfi with fields inside the word: plain shift-and-mask arithmetic.
    let fields: Vec<[u64; 3]> = cases
        .iter()
        .map(|c| {
            let pos = c[1] % 32;
            let len = c[2] % (33 - pos);
            [c[0], pos, len]
        })
        .collect();
    check(
        "bfe.u32 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &fields,
        |c| {
            let (pos, len) = (c[1] as u32, c[2] as u32);
            if len == 0 {
                0
            } else {
                u64::from((c[0] as u32 >> pos) & (u32::MAX >> (32 - len)))
            }
        },
    );
    check(
        "bfe.s32 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &fields,
        |c| {
            let (pos, len) = (c[1] as u32, c[2] as u32);
            if len == 0 {
                0
            } else {
                let v = ((c[0] as u32) << (32 - pos - len)) as i32 >> (32 - len);
                u64::from(v as u32)
            }
        },
    );
    check(
        "bfi.b32 %r5, %r12, %r10, %r11, 8; st.global.b32 [%rd5], %r5;",
        &fields,
        |c| {
            let pos = c[1] as u32;
            let len = 8.min(32 - pos);
            let m = (u32::MAX >> (32 - len)) << pos;
            u64::from((c[0] as u32 & !m) | (((c[2] as u32) << pos) & m))
        },
    );
    // Edges from the ISA: pos beyond the word reads the sign (bfe.s32) or 0 (bfe.u32).
    let edge = vec![[0x8000_0000u64, 40, 8]];
    check(
        "bfe.s32 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &edge,
        |_| 0xFFFF_FFFF,
    );
    check(
        "bfe.u32 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &edge,
        |_| 0,
    );
}

// ---------------------------------------------------------------- float arithmetic

#[test]
fn f32_round_to_nearest_matches_ieee() {
    let cases = f32_cases(6, 1000);
    check_f32(
        "add.rn.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]) + f(c[1]),
    );
    check_f32(
        "add.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]) + f(c[1]),
    );
    check_f32(
        "sub.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]) - f(c[1]),
    );
    check_f32(
        "mul.rn.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]) * f(c[1]),
    );
    check_f32(
        "div.rn.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]) / f(c[1]),
    );
    check_f32(
        "fma.rn.f32 %f5, %f10, %f11, %f12; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]).mul_add(f(c[1]), f(c[2])),
    );
    check_f32(
        "mad.rn.f32 %f5, %f10, %f11, %f12; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]).mul_add(f(c[1]), f(c[2])),
    );
    check_f32(
        "sqrt.rn.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]).sqrt(),
    );
    check_f32(
        "rcp.rn.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| 1.0 / f(c[0]),
    );
    check_f32(
        "abs.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]).abs(),
    );
    check_f32(
        "neg.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| -f(c[0]),
    );
    check_f32(
        "copysign.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[1]).copysign(f(c[0])),
    );
}

#[test]
fn f64_arithmetic_matches_ieee() {
    let mut g = Gen(7);
    let mut cases: Vec<[u64; 3]> = (0..500).map(|_| [g.next(), g.next(), g.next()]).collect();
    for s in [
        0f64,
        -0.0,
        1.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        f64::MIN_POSITIVE / 4.0,
        3.0,
    ] {
        cases.push([s.to_bits(), 3f64.to_bits(), (-0.5f64).to_bits()]);
    }
    let d = |c: u64| f64::from_bits(c);
    let check64 = |body: &str, e: &dyn Fn([u64; 3]) -> f64| {
        let got = run_cases(body, &cases);
        for (c, g) in cases.iter().zip(&got) {
            let want = e(*c);
            assert!(
                if want.is_nan() {
                    d(g[0]).is_nan()
                } else {
                    g[0] == want.to_bits()
                },
                "`{body}` on {c:#x?}: got {:e}, expected {want:e}",
                d(g[0])
            );
        }
    };
    check64(
        "add.rn.f64 %fd5, %fd10, %fd11; st.global.f64 [%rd5], %fd5;",
        &|c| d(c[0]) + d(c[1]),
    );
    check64(
        "mul.rn.f64 %fd5, %fd10, %fd11; st.global.f64 [%rd5], %fd5;",
        &|c| d(c[0]) * d(c[1]),
    );
    check64(
        "div.rn.f64 %fd5, %fd10, %fd11; st.global.f64 [%rd5], %fd5;",
        &|c| d(c[0]) / d(c[1]),
    );
    check64(
        "fma.rn.f64 %fd5, %fd10, %fd11, %fd12; st.global.f64 [%rd5], %fd5;",
        &|c| d(c[0]).mul_add(d(c[1]), d(c[2])),
    );
    check64(
        "sqrt.rn.f64 %fd5, %fd10; st.global.f64 [%rd5], %fd5;",
        &|c| d(c[0]).sqrt(),
    );
}

/// Rounds an exact value held in f64 to f32 in a directed mode, by stepping from the
/// round-to-nearest result (Rust's `as`) to its neighbour when it lies on the wrong side.
fn directed_f32(x: f64, mode: &str) -> f32 {
    let r = x as f32;
    if x.is_nan() || f64::from(r) == x {
        return r;
    }
    let above = f64::from(r) > x;
    let step_down = |v: f32| {
        if v.is_infinite() && v > 0.0 {
            f32::MAX
        } else {
            v.next_down()
        }
    };
    let step_up = |v: f32| {
        if v.is_infinite() && v < 0.0 {
            f32::MIN
        } else {
            v.next_up()
        }
    };
    match mode {
        "rz" => {
            if x > 0.0 && above {
                step_down(r)
            } else if x < 0.0 && !above {
                step_up(r)
            } else {
                r
            }
        }
        "rp" => {
            if above {
                r
            } else {
                step_up(r)
            }
        }
        "rm" => {
            if above {
                step_down(r)
            } else {
                r
            }
        }
        _ => r,
    }
}

#[test]
fn f32_directed_rounding_of_add_mul_fma_div() {
    // Operands within 2^20 of each other in magnitude, so the sum, the product and the
    // fma (product exact in f64, and the sum with c exact too) are exact in f64.
    let mut g = Gen(8);
    let mut cases = Vec::new();
    for _ in 0..600 {
        let v = |g: &mut Gen| {
            let m = (g.next() >> 40) as f64 / (1u64 << 24) as f64 + 0.5;
            let e = (g.next() % 16) as i32 - 8;
            let s = if g.next() & 1 == 0 { 1.0 } else { -1.0 };
            u64::from(((s * m * 2f64.powi(e)) as f32).to_bits())
        };
        cases.push([v(&mut g), v(&mut g), v(&mut g)]);
    }
    // Overflow: rz/rm/rp decide between infinity and the largest finite value.
    cases.push([
        u64::from(f32::MAX.to_bits()),
        u64::from(f32::MAX.to_bits()),
        0,
    ]);
    cases.push([
        u64::from((-f32::MAX).to_bits()),
        u64::from(f32::MAX.to_bits()),
        0,
    ]);
    // For fma, keep the cases whose a·b + c is exact in f64 (TwoSum error zero), so the
    // f64 value is the exact result the directed rounding starts from.
    let fma_cases: Vec<[u64; 3]> = cases
        .iter()
        .copied()
        .filter(|c| {
            let (p, q) = (f64::from(f(c[0])) * f64::from(f(c[1])), f64::from(f(c[2])));
            let s = p + q;
            let bb = s - p;
            (p - (s - bb)) + (q - bb) == 0.0
        })
        .collect();
    assert!(
        fma_cases.len() > cases.len() / 4,
        "enough exact fma cases ({})",
        fma_cases.len()
    );
    for mode in ["rn", "rz", "rm", "rp"] {
        check_f32(
            &format!("add.{mode}.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;"),
            &cases,
            |c| directed_f32(f64::from(f(c[0])) + f64::from(f(c[1])), mode),
        );
        check_f32(
            &format!("mul.{mode}.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;"),
            &cases,
            |c| directed_f32(f64::from(f(c[0])) * f64::from(f(c[1])), mode),
        );
        check_f32(
            &format!("fma.{mode}.f32 %f5, %f10, %f11, %f12; st.global.f32 [%rd5], %f5;"),
            &fma_cases,
            |c| {
                directed_f32(
                    f64::from(f(c[0])) * f64::from(f(c[1])) + f64::from(f(c[2])),
                    mode,
                )
            },
        );
        // Division: the f32 nearest quotient q, and the sign of the exact remainder
        // a - q·b (exact in f64) says on which side of the true quotient q lies.
        check_f32(
            &format!("div.{mode}.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;"),
            &cases,
            |c| {
                let (a, b) = (f(c[0]), f(c[1]));
                let q = a / b;
                let rem = f64::from(a) - f64::from(q) * f64::from(b);
                // true quotient = q + rem / b
                let q_below_true = (rem > 0.0) == (b > 0.0) && rem != 0.0;
                let q_above_true = rem != 0.0 && !q_below_true;
                match mode {
                    "rz" if q > 0.0 && q_above_true => q.next_down(),
                    "rz" if q < 0.0 && q_below_true => q.next_up(),
                    "rp" if q_below_true => q.next_up(),
                    "rm" if q_above_true => q.next_down(),
                    _ => q,
                }
            },
        );
    }
    // Hand-computed: 1/3 = 0x3EAAAAAA|AB..., 2/3 = 0x3F2AAAAA|AB...
    let thirds = vec![
        [u64::from(1f32.to_bits()), u64::from(3f32.to_bits()), 0],
        [u64::from(2f32.to_bits()), u64::from(3f32.to_bits()), 0],
    ];
    for (mode, one, two) in [
        ("rn", 0x3EAA_AAAB, 0x3F2A_AAAB),
        ("rz", 0x3EAA_AAAA, 0x3F2A_AAAA),
        ("rm", 0x3EAA_AAAA, 0x3F2A_AAAA),
        ("rp", 0x3EAA_AAAB, 0x3F2A_AAAB),
    ] {
        let got = run_cases(
            &format!("div.{mode}.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;"),
            &thirds,
        );
        assert_eq!(
            (got[0][0], got[1][0]),
            (one, two),
            "div.{mode} of 1/3 and 2/3"
        );
    }
}

#[test]
fn f32_nan_inf_denormal_ftz_sat_minmax() {
    let bits = |v: f32| u64::from(v.to_bits());
    let sub = f32::from_bits(0x0000_0100); // a subnormal
    let cases = vec![
        [bits(f32::INFINITY), bits(f32::NEG_INFINITY), 0],
        [bits(0.0), bits(f32::INFINITY), 0],
        [bits(sub), bits(2.0), 0],
        [bits(-sub), bits(0.5), 0],
        [bits(f32::NAN), bits(1.0), 0],
        [bits(1.0), bits(f32::NAN), 0],
        [bits(-0.0), bits(0.0), 0],
        [bits(1.5), bits(-2.0), 0],
    ];
    check_f32(
        "add.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]) + f(c[1]),
    );
    check_f32(
        "mul.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]) * f(c[1]),
    );
    // .ftz: subnormal inputs and results become zero of the same sign.
    let ftz = |v: f32| {
        if v.is_subnormal() {
            0f32.copysign(v)
        } else {
            v
        }
    };
    check_f32(
        "mul.ftz.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| ftz(ftz(f(c[0])) * ftz(f(c[1]))),
    );
    check_f32(
        "add.ftz.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| ftz(ftz(f(c[0])) + ftz(f(c[1]))),
    );
    // .sat clamps to [0, 1], NaN to 0.
    let sat = |v: f32| if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    check_f32(
        "add.sat.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| sat(f(c[0]) + f(c[1])),
    );
    // min/max: a NaN operand yields the other; .NaN propagates it; -0 < +0.
    let pmin = |a: f32, b: f32| {
        if a.is_nan() {
            b
        } else if b.is_nan() {
            a
        } else if a == b {
            if a.is_sign_negative() {
                a
            } else {
                b
            }
        } else {
            a.min(b)
        }
    };
    check_f32(
        "min.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| pmin(f(c[0]), f(c[1])),
    );
    check_f32(
        "max.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| -pmin(-f(c[0]), -f(c[1])),
    );
    check_f32(
        "min.NaN.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| {
            if f(c[0]).is_nan() || f(c[1]).is_nan() {
                f32::NAN
            } else {
                pmin(f(c[0]), f(c[1]))
            }
        },
    );
    let got = run_cases(
        "min.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &[[bits(-0.0), bits(0.0), 0]],
    );
    assert_eq!(got[0][0] as u32, 0x8000_0000, "min(-0, +0) is -0");
}

#[test]
fn f32_approximate_functions() {
    let mut g = Gen(9);
    let mut xs: Vec<f32> = (0..300)
        .map(|_| ((g.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0)
        .collect();
    xs.extend([0.0, -0.0, 1.0, 0.5, 2.0, 100.0, -126.5]);
    let cases: Vec<[u64; 3]> = xs.iter().map(|x| [u64::from(x.to_bits()), 0, 0]).collect();
    // The hardware's approximations have a maximum relative error near 2^-22 (PTX ISA,
    // ex2/lg2/rsqrt .approx); the emulator rounds the f64 function once, so allowing
    // 2^-21 relative (plus 2^-22 absolute for lg2 near 1) accepts both.
    let close = |body: &str, f64fn: &dyn Fn(f64) -> f64, domain: &dyn Fn(f32) -> bool| {
        let got = run_cases(body, &cases);
        for (x, g) in xs.iter().zip(&got) {
            if !domain(*x) {
                continue;
            }
            let want = f64fn(f64::from(*x));
            let g = f64::from(f(g[0]));
            let tol = want.abs() * 2f64.powi(-21) + 2f64.powi(-22);
            assert!(
                (g - want).abs() <= tol
                    || (g.is_infinite() && want.is_infinite() && g.signum() == want.signum()),
                "`{body}` at {x}: got {g}, expected {want}"
            );
        }
    };
    close(
        "ex2.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| x.exp2(),
        &|_| true,
    );
    close(
        "ex2.approx.ftz.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| x.exp2(),
        &|x| x > -126.0,
    );
    close(
        "lg2.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| x.log2(),
        &|x| x > 0.0,
    );
    close(
        "rsqrt.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| 1.0 / x.sqrt(),
        &|x| x > 0.0,
    );
    close(
        "sqrt.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| x.sqrt(),
        &|x| x >= 0.0,
    );
    close(
        "rcp.approx.ftz.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| 1.0 / x,
        &|x| x != 0.0,
    );
    close(
        "sin.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| x.sin(),
        &|_| true,
    );
    close(
        "tanh.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| x.tanh(),
        &|_| true,
    );
    // Special values, from the ISA's tables.
    let bits = |v: f32| u64::from(v.to_bits());
    let sp = vec![
        [bits(f32::NEG_INFINITY), 0, 0],
        [bits(f32::INFINITY), 0, 0],
        [bits(0.0), 0, 0],
        [bits(-0.0), 0, 0],
        [bits(-1.0), 0, 0],
        [bits(f32::NAN), 0, 0],
    ];
    let expect = |body: &str, want: [f32; 6]| {
        let got = run_cases(body, &sp);
        for (i, w) in want.iter().enumerate() {
            let g = f(got[i][0]);
            assert!(
                if w.is_nan() {
                    g.is_nan()
                } else {
                    g.to_bits() == w.to_bits()
                },
                "`{body}` case {i}: got {g}, expected {w}"
            );
        }
    };
    expect(
        "ex2.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        [0.0, f32::INFINITY, 1.0, 1.0, 0.5, f32::NAN],
    );
    expect(
        "lg2.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::NAN,
        ],
    );
    expect(
        "rcp.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        [-0.0, 0.0, f32::INFINITY, f32::NEG_INFINITY, -1.0, f32::NAN],
    );
    expect(
        "rsqrt.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        [
            f32::NAN,
            0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::NAN,
        ],
    );
    expect(
        "sqrt.rn.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        [f32::NAN, f32::INFINITY, 0.0, -0.0, f32::NAN, f32::NAN],
    );
    // .ftz: a subnormal input counts as zero.
    let got = run_cases(
        "rcp.approx.ftz.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &[[1, 0, 0]],
    );
    assert_eq!(
        f(got[0][0]),
        f32::INFINITY,
        "rcp.approx.ftz of a subnormal is +inf"
    );
}

/// The 16-bit value nearest to `v` (ties to even), found by comparing `v` exactly (in
/// f64) with the neighbours of a first guess: independent of any f64-to-16-bit rounding
/// routine. `widen` decodes bits; `guess` is any conversion within one unit; `max` is the
/// largest finite value's bits (IEEE: at or beyond max + half an ulp, the result is inf).
fn nearest_16(v: f64, widen: impl Fn(u16) -> f64, guess: u16, max: u16) -> u16 {
    if v.is_nan() {
        return 0x7FFF;
    }
    let top = widen(max);
    let threshold = top + (top - widen(max - 1)) / 2.0;
    if v.abs() >= threshold {
        return (max + 1) | if v < 0.0 { 0x8000 } else { 0 };
    }
    let mut best = guess;
    for cand in [guess.wrapping_sub(1), guess, guess.wrapping_add(1)] {
        let (c, b) = (widen(cand), widen(best));
        if c.is_nan() || c.is_infinite() || ((cand ^ guess) & 0x8000 != 0 && cand & 0x7FFF != 0) {
            continue;
        }
        let (dc, db) = ((c - v).abs(), (b - v).abs());
        if dc < db || (dc == db && cand & 1 == 0) {
            best = cand;
        }
    }
    best
}

#[test]
fn half_and_bf16_arithmetic() {
    use half::{bf16, f16};
    let mut g = Gen(10);
    let cases: Vec<[u64; 3]> = (0..400)
        .map(|_| {
            let h = |g: &mut Gen| {
                u64::from(
                    f16::from_f32(((g.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 64.0)
                        .to_bits(),
                )
            };
            let lo = [h(&mut g), h(&mut g), h(&mut g)];
            let hi = [h(&mut g), h(&mut g), h(&mut g)];
            [
                lo[0] | hi[0] << 16,
                lo[1] | hi[1] << 16,
                lo[2] | hi[2] << 16,
            ]
        })
        .collect();
    // f16 sums, products and fmas are exact in f64; the oracle picks the nearest f16 by
    // exact comparison (see `nearest_16`).
    let h = |b: u64| f64::from(f16::from_bits(b as u16).to_f32());
    let hw = |b: u16| f64::from(f16::from_bits(b).to_f32());
    let nf16 = |v: f64| u64::from(nearest_16(v, hw, f16::from_f32(v as f32).to_bits(), 0x7BFF));
    check(
        "add.rn.f16 %h5, %h10, %h11; st.global.b16 [%rd5], %h5;",
        &cases,
        |c| nf16(h(c[0]) + h(c[1])),
    );
    check(
        "mul.rn.f16 %h5, %h10, %h11; st.global.b16 [%rd5], %h5;",
        &cases,
        |c| nf16(h(c[0]) * h(c[1])),
    );
    check(
        "fma.rn.f16 %h5, %h10, %h11, %h12; st.global.b16 [%rd5], %h5;",
        &cases,
        |c| nf16(h(c[0]) * h(c[1]) + h(c[2])),
    );
    check(
        "fma.rn.f16x2 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            let part = |s: u32| nf16(h(c[0] >> s) * h(c[1] >> s) + h(c[2] >> s));
            part(0) | part(16) << 16
        },
    );
    // bf16 values: reinterpret the same random bits as bf16 (any bit pattern is fine).
    // bf16 products are exact in f64 (8 x 8 bits) and sums of two are exact in f64 too
    // unless their exponents differ by more than 45, where the sum rounds to the larger
    // operand either way.
    let bh = |b: u64| f64::from(bf16::from_bits(b as u16).to_f32());
    let bw = |b: u16| f64::from(bf16::from_bits(b).to_f32());
    let nbf16 = |v: f64| {
        u64::from(nearest_16(
            v,
            bw,
            bf16::from_f32(v as f32).to_bits(),
            0x7F7F,
        ))
    };
    let bcases: Vec<[u64; 3]> = cases
        .iter()
        .map(|c| [c[0] & 0x7FFF_7FFF ^ 0x3000_3000, c[1] ^ 0x3F00_3F00, c[2]])
        .collect();
    check(
        "mul.rn.bf16 %h5, %h10, %h11; st.global.b16 [%rd5], %h5;",
        &bcases,
        |c| nbf16(bh(c[0]) * bh(c[1])),
    );
    check(
        "add.rn.bf16x2 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &bcases,
        |c| {
            let part = |s: u32| nbf16(bh(c[0] >> s) + bh(c[1] >> s));
            part(0) | part(16) << 16
        },
    );
}

// ---------------------------------------------------------------- comparisons

#[test]
fn setp_all_comparisons_and_combined_predicates() {
    let cases = f32_cases(11, 300);
    use std::cmp::Ordering;
    type FloatCmp = (&'static str, fn(Option<Ordering>) -> bool);
    let fcmps: [FloatCmp; 16] = [
        ("eq", |o| o == Some(Ordering::Equal)),
        ("ne", |o| {
            matches!(o, Some(Ordering::Less | Ordering::Greater))
        }),
        ("lt", |o| o == Some(Ordering::Less)),
        ("le", |o| {
            matches!(o, Some(Ordering::Less | Ordering::Equal))
        }),
        ("gt", |o| o == Some(Ordering::Greater)),
        ("ge", |o| {
            matches!(o, Some(Ordering::Greater | Ordering::Equal))
        }),
        ("equ", |o| o.is_none() || o == Some(Ordering::Equal)),
        ("neu", |o| o != Some(Ordering::Equal)),
        ("ltu", |o| o.is_none() || o == Some(Ordering::Less)),
        ("leu", |o| o != Some(Ordering::Greater)),
        ("gtu", |o| o.is_none() || o == Some(Ordering::Greater)),
        ("geu", |o| o != Some(Ordering::Less)),
        ("num", |o| o.is_some()),
        ("nan", |o| o.is_none()),
        ("lo", |o| o == Some(Ordering::Less)),
        ("hs", |o| {
            matches!(o, Some(Ordering::Greater | Ordering::Equal))
        }),
    ];
    for (name, pred) in fcmps.iter().take(14) {
        check(
            &format!("setp.{name}.f32 %p1, %f10, %f11; selp.u32 %r5, 1, 0, %p1; st.global.b32 [%rd5], %r5;"),
            &cases,
            |c| u64::from(pred(f(c[0]).partial_cmp(&f(c[1])))),
        );
    }
    let ic = int_cases(12, 200);
    type IntCmp = (&'static str, fn(u32, u32) -> bool);
    let icmps: [IntCmp; 10] = [
        ("eq.s32", |a, b| a == b),
        ("ne.b32", |a, b| a != b),
        ("lt.s32", |a, b| (a as i32) < (b as i32)),
        ("le.s32", |a, b| (a as i32) <= (b as i32)),
        ("gt.s32", |a, b| (a as i32) > (b as i32)),
        ("ge.s32", |a, b| (a as i32) >= (b as i32)),
        ("lo.u32", |a, b| a < b),
        ("ls.u32", |a, b| a <= b),
        ("hi.u32", |a, b| a > b),
        ("hs.u32", |a, b| a >= b),
    ];
    for (name, pred) in icmps {
        check(
            &format!(
                "setp.{name} %p1, %r10, %r11; selp.u32 %r5, 1, 0, %p1; st.global.b32 [%rd5], %r5;"
            ),
            &ic,
            |c| u64::from(pred(c[0] as u32, c[1] as u32)),
        );
    }
    check(
        "setp.lt.u32 %p1, %r10, %r11; selp.u32 %r5, 1, 0, %p1; st.global.b32 [%rd5], %r5;",
        &ic,
        |c| u64::from((c[0] as u32) < (c[1] as u32)),
    );
    check(
        "setp.gt.s64 %p1, %rd10, %rd11; selp.u32 %r5, 1, 0, %p1; st.global.b32 [%rd5], %r5;",
        &ic,
        |c| u64::from((c[0] as i64) > (c[1] as i64)),
    );
    // Combined: p = (a < b) OP c', q = !(a < b) OP c', with c' = !(bit 0 of the third input).
    for (op, fun) in [
        ("and", (|x: bool, y: bool| x && y) as fn(bool, bool) -> bool),
        ("or", |x, y| x || y),
        ("xor", |x, y| x ^ y),
    ] {
        check(
            &format!(
                "and.b32 %r6, %r12, 1; setp.eq.u32 %p3, %r6, 1; setp.lt.{op}.s32 %p1|%p2, %r10, %r11, !%p3; selp.u32 %r5, 1, 0, %p1; selp.u32 %r7, 2, 0, %p2; or.b32 %r5, %r5, %r7; st.global.b32 [%rd5], %r5;"
            ),
            &ic,
            |c| {
                let t = (c[0] as u32 as i32) < (c[1] as u32 as i32);
                let cp = c[2] & 1 == 0;
                u64::from(fun(t, cp)) | (u64::from(fun(!t, cp)) << 1)
            },
        );
    }
    // set: all ones / 1.0f for true.
    check(
        "set.lt.u32.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &ic,
        |c| {
            if (c[0] as u32 as i32) < (c[1] as u32 as i32) {
                0xFFFF_FFFF
            } else {
                0
            }
        },
    );
    check(
        "set.gtu.f32.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| {
            let (a, b) = (f(c[0]), f(c[1]));
            u64::from(if a.is_nan() || b.is_nan() || a > b {
                1f32.to_bits()
            } else {
                0
            })
        },
    );
    check(
        "setp.ne.u32 %p1, %r12, 0; selp.b32 %r5, %r10, %r11, %p1; st.global.b32 [%rd5], %r5;",
        &ic,
        |c| {
            u64::from(if c[2] as u32 != 0 {
                c[0] as u32
            } else {
                c[1] as u32
            })
        },
    );
    check(
        "setp.ne.u32 %p1, %r12, 0; selp.f64 %fd5, %fd10, %fd11, %p1; st.global.f64 [%rd5], %fd5;",
        &ic,
        |c| {
            if c[2] as u32 != 0 {
                c[0]
            } else {
                c[1]
            }
        },
    );
}

// ---------------------------------------------------------------- conversions

/// The directed roundings of a 16-bit format, stepped from the round-to-nearest bits
/// `rn` (from the `half` crate): when the nearest value lies on the wrong side of `x`,
/// move one unit in the last place (one step of the bit pattern's magnitude).
fn directed_16(x: f32, rn: u16, rn_value: f32, mode: &str) -> u16 {
    if x.is_nan() || rn_value == x {
        return rn;
    }
    let above = rn_value > x;
    let toward_zero = |b: u16| if b & 0x7FFF == 0 { b } else { b - 1 };
    let away = |b: u16| b + 1;
    // Stepping the magnitude down moves toward zero; up moves away from zero.
    let down_in_value = |b: u16| {
        if b & 0x8000 == 0 {
            toward_zero(b)
        } else {
            away(b)
        }
    };
    let up_in_value = |b: u16| {
        if b & 0x8000 == 0 {
            away(b)
        } else if b & 0x7FFF == 0 {
            // -0 up is the smallest positive subnormal.
            1
        } else {
            toward_zero(b)
        }
    };
    match mode {
        "rz" => {
            if (x > 0.0 && above) || (x < 0.0 && !above) {
                toward_zero(rn)
            } else {
                rn
            }
        }
        "rp" => {
            if above {
                rn
            } else if rn == 0x8000 || rn == 0 {
                if x > 0.0 {
                    1
                } else {
                    0x8000
                }
            } else {
                up_in_value(rn)
            }
        }
        "rm" => {
            if !above {
                rn
            } else if rn == 0 || rn == 0x8000 {
                if x < 0.0 {
                    0x8001
                } else {
                    0
                }
            } else {
                down_in_value(rn)
            }
        }
        _ => rn,
    }
}

fn cvt_cases() -> Vec<[u64; 3]> {
    let mut g = Gen(13);
    let mut cases: Vec<[u64; 3]> = f32_specials()
        .into_iter()
        .map(|b| [u64::from(b), 0, 0])
        .collect();
    for _ in 0..1500 {
        let r = g.next();
        let bits = match r % 3 {
            0 => g.next() as u32,
            // Near the f16 range and its subnormals.
            1 => ((((g.next() % 50) + 100) as u32) << 23) | (g.next() as u32 & 0x807F_FFFF),
            _ => (0x3F80_0000u32 + (g.next() as u32 & 0xFFFF)) | (r as u32 & 0x8000_0000),
        };
        cases.push([u64::from(bits), 0, 0]);
    }
    cases
}

#[test]
fn cvt_f32_to_f16_every_rounding_mode() {
    use half::f16;
    let cases = cvt_cases();
    for mode in ["rn", "rz", "rm", "rp"] {
        let got = run_cases(
            &format!("cvt.{mode}.f16.f32 %h5, %f10; st.global.b16 [%rd5], %h5;"),
            &cases,
        );
        for (c, g) in cases.iter().zip(&got) {
            let x = f(c[0]);
            let rn = f16::from_f32(x);
            let g16 = g[0] as u16;
            if x.is_nan() {
                assert!(
                    f16::from_bits(g16).is_nan(),
                    "cvt.{mode}.f16.f32 of NaN gave {g16:#x}"
                );
                continue;
            }
            let want = directed_16(x, rn.to_bits(), rn.to_f32(), mode);
            assert_eq!(g16, want, "cvt.{mode}.f16.f32 of {x:e} ({:#x})", c[0]);
        }
    }
}

#[test]
fn cvt_f32_to_bf16_every_rounding_mode() {
    use half::bf16;
    let cases = cvt_cases();
    for mode in ["rn", "rz", "rm", "rp"] {
        let got = run_cases(
            &format!("cvt.{mode}.bf16.f32 %h5, %f10; st.global.b16 [%rd5], %h5;"),
            &cases,
        );
        for (c, g) in cases.iter().zip(&got) {
            let x = f(c[0]);
            let rn = bf16::from_f32(x);
            let g16 = g[0] as u16;
            if x.is_nan() {
                assert!(
                    bf16::from_bits(g16).is_nan(),
                    "cvt.{mode}.bf16.f32 of NaN gave {g16:#x}"
                );
                continue;
            }
            let want = directed_16(x, rn.to_bits(), rn.to_f32(), mode);
            assert_eq!(g16, want, "cvt.{mode}.bf16.f32 of {x:e} ({:#x})", c[0]);
        }
    }
}

#[test]
fn cvt_to_16_bit_hand_computed_bit_patterns() {
    // (f32 bits, mode, f16 bits, bf16 bits), worked out by hand from the formats.
    let table: [(u32, &str, u16, u16); 21] = [
        (0x3F80_8001, "rn", 0x3C04, 0x3F81), // just above the bf16 midpoint: up (a double-rounding trap)
        (0x3F80_0000, "rn", 0x3C00, 0x3F80), // 1.0
        (0x3F80_8000, "rn", 0x3C04, 0x3F80), // 1 + 2^-8: exact in f16; bf16 tie, to even
        (0x3F81_8000, "rn", 0x3C0C, 0x3F82), // bf16 tie, odd below: up
        (0x3F81_FFFF, "rz", 0x3C0F, 0x3F81),
        (0x3F80_0001, "rp", 0x3C01, 0x3F81),
        (0xBF80_0001, "rm", 0xBC01, 0xBF81),
        (0xBF80_0001, "rp", 0xBC00, 0xBF80),
        (0x477F_E000, "rn", 0x7BFF, 0x4780), // 65504 = f16 max
        (0x477F_F000, "rn", 0x7C00, 0x4780), // 65520: f16 rounds to inf
        (0x477F_F000, "rz", 0x7BFF, 0x477F),
        (0x7F7F_FFFF, "rn", 0x7C00, 0x7F80), // f32 max: inf in both (bf16 rounds up)
        (0x7F7F_FFFF, "rz", 0x7BFF, 0x7F7F),
        (0x3380_0000, "rn", 0x0001, 0x3380), // 2^-24: smallest f16 subnormal
        (0x3300_0000, "rn", 0x0000, 0x3300), // 2^-25: tie between 0 and 2^-24, to even
        (0x3340_0000, "rn", 0x0001, 0x3340), // 1.5 * 2^-25
        (0xB280_0000, "rm", 0x8001, 0xB280), // -2^-26
        (0xB280_0000, "rp", 0x8000, 0xB280),
        (0x0000_0001, "rp", 0x0001, 0x0001), // f32 subnormal: bf16 keeps it exactly? no: 2^-149 rounds up to bf16's 2^-133
        (0xFF80_0000, "rn", 0xFC00, 0xFF80), // -inf
        (0x8000_0000, "rz", 0x8000, 0x8000), // -0
    ];
    for (bits, mode, h, b) in table {
        let cases = vec![[u64::from(bits), 0, 0]];
        let got = run_cases(
            &format!("cvt.{mode}.f16.f32 %h5, %f10; st.global.b16 [%rd5], %h5;"),
            &cases,
        );
        assert_eq!(got[0][0] as u16, h, "cvt.{mode}.f16.f32 of {bits:#x}");
        let got = run_cases(
            &format!("cvt.{mode}.bf16.f32 %h5, %f10; st.global.b16 [%rd5], %h5;"),
            &cases,
        );
        assert_eq!(got[0][0] as u16, b, "cvt.{mode}.bf16.f32 of {bits:#x}");
    }
}

#[test]
fn cvt_packs_bf16x2_and_f16x2_a_high_b_low() {
    use half::{bf16, f16};
    let cases = cvt_cases();
    check(
        "cvt.rn.bf16x2.f32 %r5, %f10, %f11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            let cv = |v: u64| {
                let x = f(v);
                if x.is_nan() {
                    0x7FFF
                } else {
                    u64::from(bf16::from_f32(x).to_bits())
                }
            };
            (cv(c[0]) << 16) | cv(c[1])
        },
    );
    check(
        "cvt.rn.f16x2.f32 %r5, %f10, %f11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            let cv = |v: u64| {
                let x = f(v);
                if x.is_nan() {
                    0x7FFF
                } else {
                    u64::from(f16::from_f32(x).to_bits())
                }
            };
            (cv(c[0]) << 16) | cv(c[1])
        },
    );
    // .satfinite: infinities become the largest finite value.
    let inf = vec![[
        u64::from(f32::INFINITY.to_bits()),
        u64::from(f32::MAX.to_bits()),
        0,
    ]];
    check(
        "cvt.rn.satfinite.bf16x2.f32 %r5, %f10, %f11; st.global.b32 [%rd5], %r5;",
        &inf,
        |_| 0x7F7F_7F7F,
    );
}

#[test]
fn cvt_widening_float_is_exact() {
    use half::{bf16, f16};
    let mut g = Gen(14);
    let cases: Vec<[u64; 3]> = (0..1000)
        .map(|_| [g.next() & 0xFFFF, 0, 0])
        .chain([[0x7C00, 0, 0], [0x0001, 0, 0], [0x8000, 0, 0]])
        .collect();
    check_f32(
        "cvt.f32.f16 %f5, %h10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f16::from_bits(c[0] as u16).to_f32(),
    );
    check_f32(
        "cvt.f32.bf16 %f5, %h10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| bf16::from_bits(c[0] as u16).to_f32(),
    );
    let fc: Vec<[u64; 3]> = f32_cases(15, 300)
        .into_iter()
        .filter(|c| !f(c[0]).is_nan())
        .collect();
    check(
        "cvt.f64.f32 %fd5, %f10; st.global.f64 [%rd5], %fd5;",
        &fc,
        |c| f64::from(f(c[0])).to_bits(),
    );
    check_f32(
        "cvt.rn.f32.f64 %f5, %fd10; st.global.f32 [%rd5], %f5;",
        &fc,
        |c| f64::from_bits(c[0]) as f32,
    );
}

#[test]
fn cvt_float_to_int_rounding_and_saturation() {
    let vals: [f32; 16] = [
        2.5,
        3.5,
        -2.5,
        2.7,
        -2.7,
        -2.1,
        2.1,
        0.5,
        -0.5,
        1e10,
        -1e10,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        300.0,
        -5.0,
    ];
    let cases: Vec<[u64; 3]> = vals
        .iter()
        .map(|v| [u64::from(v.to_bits()), 0, 0])
        .collect();
    let sat_i32 = |x: f64| {
        if x.is_nan() {
            0
        } else {
            x.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
        }
    };
    type Rounding = (&'static str, fn(f64) -> f64);
    let modes: [Rounding; 4] = [
        ("rni", f64::round_ties_even),
        ("rzi", f64::trunc),
        ("rmi", f64::floor),
        ("rpi", f64::ceil),
    ];
    for (m, r) in modes {
        check(
            &format!("cvt.{m}.s32.f32 %r5, %f10; st.global.b32 [%rd5], %r5;"),
            &cases,
            |c| u64::from(sat_i32(r(f64::from(f(c[0])))) as u32),
        );
        check(
            &format!("cvt.{m}.u32.f32 %r5, %f10; st.global.b32 [%rd5], %r5;"),
            &cases,
            |c| {
                let x = r(f64::from(f(c[0])));
                u64::from(if x.is_nan() {
                    0
                } else {
                    x.clamp(0.0, f64::from(u32::MAX)) as u32
                })
            },
        );
        check(
            &format!("cvt.{m}.s64.f32 %rd6, %f10; st.global.b64 [%rd5], %rd6;"),
            &cases,
            |c| {
                let x = r(f64::from(f(c[0])));
                if x.is_nan() {
                    0
                } else {
                    x as i64 as u64
                }
            },
        );
    }
    // Narrow destinations saturate to their own range.
    check(
        "cvt.rzi.u8.f32 %r5, %f10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            let x = f(c[0]);
            u64::from(if x.is_nan() {
                0
            } else {
                x.trunc().clamp(0.0, 255.0) as u8
            })
        },
    );
    check(
        "cvt.rni.s16.f32 %r5, %f10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            let x = f(c[0]);
            // Sign-extended into the 32-bit register.
            u64::from(
                (if x.is_nan() {
                    0
                } else {
                    x.round_ties_even().clamp(-32768.0, 32767.0) as i16
                }) as i32 as u32,
            )
        },
    );
    // Float-to-float integer rounding and .sat.
    check_f32(
        "cvt.rni.f32.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]).round_ties_even(),
    );
    check_f32(
        "cvt.rmi.f32.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]).floor(),
    );
    check_f32(
        "cvt.sat.f32.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| {
            let x = f(c[0]);
            if x.is_nan() {
                0.0
            } else {
                x.clamp(0.0, 1.0)
            }
        },
    );
}

#[test]
fn cvt_int_to_float_every_rounding_mode() {
    let ints: [i64; 10] = [
        16_777_217,
        -16_777_217,
        16_777_219,
        1,
        0,
        -1,
        i64::from(i32::MAX),
        i64::from(i32::MIN),
        65_520,
        33_554_435,
    ];
    let cases: Vec<[u64; 3]> = ints.iter().map(|&v| [v as u64, 0, 0]).collect();
    for mode in ["rn", "rz", "rm", "rp"] {
        check_f32(
            &format!("cvt.{mode}.f32.s32 %f5, %r10; st.global.f32 [%rd5], %f5;"),
            &cases,
            |c| directed_f32(f64::from(c[0] as u32 as i32), mode),
        );
        check_f32(
            &format!("cvt.{mode}.f32.u32 %f5, %r10; st.global.f32 [%rd5], %f5;"),
            &cases,
            |c| directed_f32(f64::from(c[0] as u32), mode),
        );
        check_f32(
            &format!("cvt.{mode}.f32.s64 %f5, %rd10; st.global.f32 [%rd5], %f5;"),
            &cases,
            |c| directed_f32(c[0] as i64 as f64, mode),
        );
    }
    // Hand-computed: 2^24 + 1 between 2^24 and 2^24 + 2.
    let got = run_cases(
        "cvt.rp.f32.u32 %f5, %r10; st.global.f32 [%rd5], %f5;",
        &[[16_777_217, 0, 0]],
    );
    assert_eq!(f(got[0][0]), 16_777_218.0);
    let got = run_cases(
        "cvt.rn.f32.u32 %f5, %r10; st.global.f32 [%rd5], %f5;",
        &[[16_777_217, 0, 0]],
    );
    assert_eq!(f(got[0][0]), 16_777_216.0);
    // u64 beyond 2^53 to f64: rounding needs the residual the f64 conversion lost.
    let big = (1u64 << 60) + 1;
    let got = run_cases(
        "cvt.rp.f64.u64 %fd5, %rd10; st.global.f64 [%rd5], %fd5;",
        &[[big, 0, 0]],
    );
    assert_eq!(f64::from_bits(got[0][0]), ((1u64 << 60) as f64).next_up());
    let got = run_cases(
        "cvt.rn.f16.s32 %h5, %r10; st.global.b16 [%rd5], %h5;",
        &[[65_520, 0, 0], [2049, 0, 0]],
    );
    assert_eq!(
        (got[0][0] as u16, got[1][0] as u16),
        (0x7C00, 0x6800),
        "65520 -> inf, 2049 -> 2048 (tie to even)"
    );
    let got = run_cases(
        "cvt.rz.f16.s32 %h5, %r10; st.global.b16 [%rd5], %h5;",
        &[[65_520, 0, 0]],
    );
    assert_eq!(got[0][0] as u16, 0x7BFF, "65520 toward zero is 65504");
}

#[test]
fn cvt_int_to_int_truncation_extension_saturation() {
    let cases = int_cases(16, 200);
    check(
        "cvt.s32.s8 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(c[0] as u8 as i8 as i32 as u32),
    );
    check(
        "cvt.u32.u8 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(c[0] as u8),
    );
    check(
        "cvt.u8.u32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(c[0] as u8),
    );
    check(
        "cvt.s64.s32 %rd6, %r10; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| c[0] as u32 as i32 as i64 as u64,
    );
    check(
        "cvt.u64.u32 %rd6, %r10; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| u64::from(c[0] as u32),
    );
    check(
        "cvt.u32.u64 %r5, %rd10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(c[0] as u32),
    );
    check(
        "cvt.sat.s8.s32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((c[0] as u32 as i32).clamp(-128, 127) as u32),
    );
    check(
        "cvt.sat.u16.s32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((c[0] as u32 as i32).clamp(0, 65535) as u32),
    );
    check(
        "cvt.u16.u32 %h5, %r10; st.global.b16 [%rd5], %h5;",
        &cases,
        |c| u64::from(c[0] as u16),
    );
}

// ---------------------------------------------------------------- moves and memory

#[test]
fn mov_pack_unpack_and_immediates() {
    let cases = int_cases(17, 100);
    check(
        "mov.b64 %rd6, {%r10, %r11}; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| (c[0] & 0xFFFF_FFFF) | (c[1] << 32),
    );
    check(
        "mov.b64 {%r5, %r6}, %rd10; st.global.b32 [%rd5], %r6;",
        &cases,
        |c| c[0] >> 32,
    );
    check(
        "mov.b32 {%h5, %h6}, %r10; mov.b32 %r5, {%h6, %h5}; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            let x = c[0] as u32;
            u64::from(x.rotate_left(16))
        },
    );
    let one = vec![[0u64; 3]];
    check(
        "mov.f32 %f5, 0f3FC00000; st.global.f32 [%rd5], %f5;",
        &one,
        |_| 0x3FC0_0000,
    );
    check(
        "mov.f64 %fd5, 0d3FF8000000000000; st.global.f64 [%rd5], %fd5;",
        &one,
        |_| 1.5f64.to_bits(),
    );
    check("mov.f32 %f5, 1.5; st.global.f32 [%rd5], %f5;", &one, |_| {
        0x3FC0_0000
    });
    check("mov.u32 %r5, -2; st.global.b32 [%rd5], %r5;", &one, |_| {
        0xFFFF_FFFE
    });
    check(
        "mov.u32 %r5, 0xDEADBEEF; st.global.b32 [%rd5], %r5;",
        &one,
        |_| 0xDEAD_BEEF,
    );
    check(
        "add.f32 %f5, %f10, 0fBF800000; st.global.f32 [%rd5], %f5;",
        &[[u64::from(3f32.to_bits()), 0, 0]],
        |_| u64::from(2f32.to_bits()),
    );
}

/// Runs a whole kernel (not the case wrapper) over one buffer; returns the buffer after.
fn run_buffer(text: &str, kernel: &str, dims: LaunchDims, init: &[u8]) -> Vec<u8> {
    let module = Module::parse(text).unwrap_or_else(|e| panic!("parse: {e}"));
    let mut mem = DeviceMemory::new();
    let buf = mem.alloc(init.len(), "buf");
    mem.write(buf, init).unwrap();
    launch(
        &module,
        kernel,
        &dims,
        &buf.to_le_bytes(),
        &mut mem,
        &Checks::default(),
    )
    .unwrap_or_else(|e| panic!("launch: {e}"));
    let mut out = vec![0u8; init.len()];
    mem.read(buf, &mut out).unwrap();
    out
}

#[test]
fn ld_st_vector_widths_and_sign_extension() {
    // Each thread t copies 16 bytes at 16t with different widths and writes them back
    // at 512 + 16t, and widens a signed byte.
    let text = format!(
        "{HEADER}
.visible .entry k(.param .u64 buf)
{{
    .reg .b16 %h<4>;
    .reg .b32 %r<12>;
    .reg .b64 %rd<8>;
    .reg .f32 %f<4>;
    ld.param.u64 %rd1, [buf];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r0, %tid.x;
    mul.wide.u32 %rd2, %r0, 16;
    add.s64 %rd3, %rd1, %rd2;
    ld.global.v4.u32 {{%r1, %r2, %r3, %r4}}, [%rd3];
    st.global.v4.u32 [%rd3+512], {{%r4, %r3, %r2, %r1}};
    ld.global.v2.u64 {{%rd4, %rd5}}, [%rd3];
    st.global.v2.u64 [%rd3+1024], {{%rd5, %rd4}};
    ld.global.v2.f32 {{%f1, %f2}}, [%rd3+8];
    st.global.v2.f32 [%rd3+1536], {{%f2, %f1}};
    ld.global.s8 %r5, [%rd3+3];
    st.global.u32 [%rd3+2048], %r5;
    ld.global.u8 %r6, [%rd3+3];
    st.global.u32 [%rd3+2052], %r6;
    ld.global.v2.u16 {{%h1, %h2}}, [%rd3+4];
    st.global.v2.u16 [%rd3+2056], {{%h2, %h1}};
    ld.global.nc.s16 %r7, [%rd3+6];
    st.global.s32 [%rd3+2060], %r7;
    ret;
}}
"
    );
    let mut g = Gen(18);
    let mut init = vec![0u8; 2560];
    for b in init[..512].iter_mut() {
        *b = g.next() as u8;
    }
    let out = run_buffer(
        &text,
        "k",
        LaunchDims {
            grid: [1, 1, 1],
            block: [32, 1, 1],
            dynamic_shared_bytes: 0,
        },
        &init,
    );
    let w32 = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    for t in 0..32 {
        let s = 16 * t;
        for k in 0..4 {
            assert_eq!(
                w32(&out, 512 + s + 4 * k),
                w32(&init, s + 4 * (3 - k)),
                "v4 thread {t}"
            );
        }
        assert_eq!(out[1024 + s..1024 + s + 8], init[s + 8..s + 16]);
        assert_eq!(out[1024 + s + 8..1024 + s + 16], init[s..s + 8]);
        assert_eq!(out[1536 + s..1536 + s + 4], init[s + 12..s + 16]);
        assert_eq!(
            w32(&out, 2048 + s),
            init[s + 3] as i8 as i32 as u32,
            "ld.s8 sign-extends"
        );
        assert_eq!(
            w32(&out, 2052 + s),
            u32::from(init[s + 3]),
            "ld.u8 zero-extends"
        );
        assert_eq!(out[2056 + s..2058 + s], init[s + 6..s + 8]);
        assert_eq!(
            w32(&out, 2060 + s),
            i16::from_le_bytes([init[s + 6], init[s + 7]]) as i32 as u32
        );
    }
}

#[test]
fn shared_static_dynamic_local_param_and_generic() {
    // Thread t: writes t into static shared, t*3 into dynamic shared, t*5 into a local
    // array; after a barrier reads its neighbour's values (generic loads through cvta),
    // adds the param `bias` and stores.
    let text = format!(
        "{HEADER}
.visible .entry k(.param .u64 buf, .param .u32 bias, .param .align 8 .b8 pair[16])
{{
    .reg .pred %p<2>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<16>;
    .shared .align 4 .b32 st[64];
    .extern .shared .align 16 .b8 dyn[];
    .local .align 4 .b8 loc[16];
    ld.param.u64 %rd1, [buf];
    ld.param.u32 %r9, [bias];
    ld.param.u32 %r10, [pair+8];
    mov.u32 %r0, %tid.x;
    shl.b32 %r1, %r0, 2;
    mov.u32 %r2, st;
    add.s32 %r3, %r2, %r1;
    st.shared.u32 [%r3], %r0;
    mov.u32 %r4, dyn;
    add.s32 %r5, %r4, %r1;
    mul.lo.s32 %r6, %r0, 3;
    st.shared.u32 [%r5], %r6;
    mul.lo.s32 %r7, %r0, 5;
    st.local.u32 [loc+4], %r7;
    bar.sync 0;
    add.s32 %r8, %r0, 1;
    and.b32 %r8, %r8, 63;
    shl.b32 %r8, %r8, 2;
    cvt.u64.u32 %rd2, %r8;
    mov.u64 %rd3, st;
    cvta.shared.u64 %rd4, %rd3;
    add.s64 %rd5, %rd4, %rd2;
    ld.u32 %r11, [%rd5];
    mov.u64 %rd6, dyn;
    cvta.shared.u64 %rd7, %rd6;
    add.s64 %rd8, %rd7, %rd2;
    ld.u32 %r12, [%rd8];
    ld.local.u32 %r13, [loc+4];
    add.s32 %r11, %r11, %r12;
    add.s32 %r11, %r11, %r13;
    add.s32 %r11, %r11, %r9;
    add.s32 %r11, %r11, %r10;
    cvt.u64.u32 %rd9, %r1;
    add.s64 %rd10, %rd1, %rd9;
    st.global.u32 [%rd10], %r11;
    ret;
}}
"
    );
    let module = Module::parse(&text).unwrap();
    let params_info = module.params("k").unwrap();
    assert_eq!(
        params_info
            .iter()
            .map(|p| (p.offset, p.size, p.align))
            .collect::<Vec<_>>(),
        vec![(0, 8, 8), (8, 4, 4), (16, 16, 8)]
    );
    let mut mem = DeviceMemory::new();
    let buf = mem.alloc(256, "buf");
    let mut params = vec![0u8; 32];
    params[..8].copy_from_slice(&buf.to_le_bytes());
    params[8..12].copy_from_slice(&1000u32.to_le_bytes());
    params[24..28].copy_from_slice(&7u32.to_le_bytes());
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [64, 1, 1],
        dynamic_shared_bytes: 256,
    };
    launch(&module, "k", &dims, &params, &mut mem, &Checks::default()).unwrap();
    let mut out = vec![0u8; 256];
    mem.read(buf, &mut out).unwrap();
    for t in 0..64u32 {
        let n = (t + 1) % 64;
        let want = n + 3 * n + 5 * t + 1000 + 7;
        assert_eq!(
            u32::from_le_bytes(out[4 * t as usize..4 * t as usize + 4].try_into().unwrap()),
            want,
            "thread {t}"
        );
    }
}

#[test]
fn atomics_global_and_shared_are_deterministic() {
    // 256 threads (8 warps): global add.u32 of tid, global add.f32 of 0.1*tid (applied in
    // thread order, so the f32 sum equals the sequential sum), shared max.s32, cas and
    // exch, red.add.u64, inc with wrap.
    let text = format!(
        "{HEADER}
.visible .entry k(.param .u64 buf)
{{
    .reg .pred %p<2>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<8>;
    .reg .f32 %f<4>;
    .shared .align 4 .b32 smax;
    ld.param.u64 %rd1, [buf];
    mov.u32 %r0, %tid.x;
    setp.ne.u32 %p1, %r0, 0;
    @%p1 bra SKIP;
    mov.u32 %r9, -1000;
    st.shared.u32 [smax], %r9;
SKIP:
    bar.sync 0;
    atom.global.add.u32 %r1, [%rd1], %r0;
    cvt.rn.f32.u32 %f1, %r0;
    mul.f32 %f1, %f1, 0f3DCCCCCD;
    atom.global.add.f32 %f2, [%rd1+4], %f1;
    sub.s32 %r2, %r0, 100;
    atom.shared.max.s32 %r3, [smax], %r2;
    red.global.add.u64 [%rd1+8], 3;
    atom.global.inc.u32 %r4, [%rd1+16], 9;
    atom.global.cas.b32 %r5, [%rd1+20], %r0, 77;
    atom.global.exch.b32 %r6, [%rd1+24], %r0;
    atom.global.min.s32 %r7, [%rd1+28], %r2;
    bar.sync 0;
    @%p1 bra DONE;
    ld.shared.u32 %r8, [smax];
    st.global.u32 [%rd1+32], %r8;
DONE:
    ret;
}}
"
    );
    let out = run_buffer(
        &text,
        "k",
        LaunchDims {
            grid: [1, 1, 1],
            block: [256, 1, 1],
            dynamic_shared_bytes: 0,
        },
        &[0u8; 64],
    );
    let w = |i: usize| u32::from_le_bytes(out[i..i + 4].try_into().unwrap());
    assert_eq!(w(0), (0..256).sum::<u32>());
    let mut s = 0f32;
    for t in 0..256u32 {
        s += t as f32 * f32::from_bits(0x3DCC_CCCD);
    }
    assert_eq!(
        f32::from_bits(w(4)),
        s,
        "f32 atomics applied in thread order"
    );
    assert_eq!(u64::from_le_bytes(out[8..16].try_into().unwrap()), 3 * 256);
    assert_eq!(w(16), 256 % 10, "inc wraps to 0 after 9");
    assert_eq!(w(20), 77, "cas succeeds once (thread 0 sees 0)");
    assert_eq!(w(24), 255, "exch keeps the last thread's value");
    assert_eq!(w(28) as i32, -100);
    assert_eq!(w(32) as i32, 155);
}

#[test]
fn special_registers_in_a_3d_launch() {
    // Each thread writes (tid, ntid, ctaid, nctaid, laneid, warpid) packed in bytes.
    let text = format!(
        "{HEADER}
.visible .entry k(.param .u64 buf)
{{
    .reg .b32 %r<24>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [buf];
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, %tid.y;
    mov.u32 %r3, %tid.z;
    mov.u32 %r4, %ntid.x;
    mov.u32 %r5, %ntid.y;
    mov.u32 %r6, %ctaid.x;
    mov.u32 %r7, %ctaid.y;
    mov.u32 %r8, %ctaid.z;
    mov.u32 %r9, %nctaid.x;
    mov.u32 %r10, %nctaid.y;
    mov.u32 %r11, %laneid;
    mov.u32 %r12, %warpid;
    // linear thread = x + y*ntid.x + z*ntid.x*ntid.y; cta = cx + cy*ncx + cz*ncx*ncy
    mad.lo.s32 %r13, %r3, %r5, %r2;
    mad.lo.s32 %r13, %r13, %r4, %r1;
    mad.lo.s32 %r14, %r8, %r10, %r7;
    mad.lo.s32 %r14, %r14, %r9, %r6;
    mov.u32 %r15, %ntid.z;
    mul.lo.s32 %r16, %r4, %r5;
    mul.lo.s32 %r16, %r16, %r15;
    mad.lo.s32 %r17, %r14, %r16, %r13;
    mul.wide.u32 %rd2, %r17, 16;
    add.s64 %rd3, %rd1, %rd2;
    st.global.v4.u32 [%rd3], {{%r13, %r14, %r11, %r12}};
    ret;
}}
"
    );
    let (grid, block) = ([2u32, 3, 2], [8u32, 5, 3]);
    let threads = (block.iter().product::<u32>() * grid.iter().product::<u32>()) as usize;
    let out = run_buffer(
        &text,
        "k",
        LaunchDims {
            grid,
            block,
            dynamic_shared_bytes: 0,
        },
        &vec![0u8; 16 * threads],
    );
    let per_cta = block.iter().product::<u32>();
    for i in 0..threads {
        let v: Vec<u32> = (0..4)
            .map(|k| {
                u32::from_le_bytes(out[16 * i + 4 * k..16 * i + 4 * k + 4].try_into().unwrap())
            })
            .collect();
        let (cta, t) = (i as u32 / per_cta, i as u32 % per_cta);
        assert_eq!(v, vec![t, cta, t % 32, t / 32], "thread {i}");
    }
}

#[test]
fn membar_fence_and_pragmas_are_accepted() {
    let cases = vec![[5u64, 0, 0]];
    check("membar.gl; fence.acq_rel.gpu; membar.cta; fence.sc.sys; mov.u32 %r5, %r10; st.global.b32 [%rd5], %r5;", &cases, |_| 5);
}
