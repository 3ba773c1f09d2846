//! Shared by the per-instruction-family emulator tests (emu_instructions*.rs): the
//! one-thread-per-case kernel wrapper, the case generators and the directed-rounding
//! reference. Each test binary uses a part of it.
//!
//! Each test runs a one-instruction (or few-instruction) kernel over many input cases, one
//! thread per case, and compares with values computed in Rust by other means: Rust's
//! own IEEE f32/f64 arithmetic, the `half` crate's conversions, u128/i128 integer
//! arithmetic, bit-stepping from a round-to-nearest result to the directed roundings, and
//! hand-computed bit patterns.
#![allow(dead_code)]

use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, Module};

pub const HEADER: &str = ".version 8.0\n.target sm_80\n.address_size 64\n";

/// Wraps `body` into a kernel that runs once per case. Each case is three 64-bit inputs,
/// loaded as `%rd10..%rd12` (u64), `%r10..%r12` (low 32 bits), `%f10..%f12` (f32 of the
/// low 32 bits), `%fd10..%fd12` (f64) and `%h10..%h12` (low 16 bits). The body stores its
/// results at `[%rd5]` and `[%rd5+8]` (two 8-byte slots per case, zero-initialised).
pub fn case_kernel(body: &str) -> String {
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
pub fn run_cases(body: &str, cases: &[[u64; 3]]) -> Vec<[u64; 2]> {
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
pub fn check(body: &str, cases: &[[u64; 3]], expect: impl Fn([u64; 3]) -> u64) {
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
pub fn check_f32(body: &str, cases: &[[u64; 3]], expect: impl Fn([u64; 3]) -> f32) {
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
pub struct Gen(pub u64);
impl Gen {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Integer cases: random values mixed with edge values.
pub fn int_cases(seed: u64, n: usize) -> Vec<[u64; 3]> {
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
pub fn f32_specials() -> Vec<u32> {
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

pub fn f32_cases(seed: u64, n: usize) -> Vec<[u64; 3]> {
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

pub fn f(c: u64) -> f32 {
    f32::from_bits(c as u32)
}

/// Rounds an exact value held in f64 to f32 in a directed mode, by stepping from the
/// round-to-nearest result (Rust's `as`) to its neighbour when it lies on the wrong side.
pub fn directed_f32(x: f64, mode: &str) -> f32 {
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
