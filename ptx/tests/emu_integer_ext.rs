//! The integer instructions compilers emit beyond the basic set (`mul24`, `mad24`, `shf`,
//! `bfind`, `bmsk`, `dp4a`, `dp2a`, every `prmt` mode, and the carry chains of `add.cc`/
//! `addc`/`sub.cc`/`subc`/`mad.cc`/`madc`), run by the emulator on random and edge-case
//! inputs (`tests/kernels/integer_ext.ptx`, which ptxas accepts: `tests/ptxas.rs`) against
//! references written here from the PTX ISA's semantics.

use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, Module};

const KERNEL: &str = include_str!("kernels/integer_ext.ptx");
/// Outputs per thread (see the kernel's header).
const OUTS: usize = 44;

fn mul24(a: u32, b: u32, signed: bool) -> i64 {
    if signed {
        let s = |v: u32| i64::from(((v << 8) as i32) >> 8);
        s(a) * s(b)
    } else {
        i64::from(a & 0xFF_FFFF) * i64::from(b & 0xFF_FFFF)
    }
}

fn shf(a: u32, b: u32, c: u32, left: bool, clamp: bool) -> u32 {
    let n = u64::from(if clamp { c.min(32) } else { c & 31 });
    let (a, b) = (u64::from(a), u64::from(b));
    (if left {
        (b << n) | (a >> (32 - n))
    } else {
        (b << (32 - n)) | (a >> n)
    }) as u32
}

fn bfind(a: u64, bits: u32, signed: bool, shiftamt: bool) -> u32 {
    let msb = bits - 1;
    let a = if signed && (a >> msb) & 1 == 1 { !a } else { a };
    for i in (0..=msb).rev() {
        if (a >> i) & 1 == 1 {
            return if shiftamt { msb - i } else { i };
        }
    }
    u32::MAX
}

/// The bits [pos, min(pos + width, 32)) set, position and width wrapped to 0..31 or
/// clamped to 0..32.
fn bmsk(p: u32, w: u32, clamp: bool) -> u32 {
    let (pos, width) = if clamp {
        (p.min(32), w.min(32))
    } else {
        (p & 31, w & 31)
    };
    (pos..(pos + width).min(32)).fold(0, |m, i| m | (1 << i))
}

fn lanes(v: u32, n: u32, signed: bool) -> Vec<i64> {
    let bits = 32 / n;
    (0..n)
        .map(|k| {
            let x = (v >> (bits * k)) & ((1u64 << bits) - 1) as u32;
            if signed {
                i64::from(((x << (32 - bits)) as i32) >> (32 - bits))
            } else {
                i64::from(x)
            }
        })
        .collect()
}

fn dp4a(a: u32, b: u32, c: u32, sa: bool, sb: bool) -> u32 {
    let c = if sa || sb {
        i64::from(c as i32)
    } else {
        i64::from(c)
    };
    let (va, vb) = (lanes(a, 4, sa), lanes(b, 4, sb));
    (c + (0..4).map(|k| va[k] * vb[k]).sum::<i64>()) as u32
}

fn dp2a(a: u32, b: u32, c: u32, sa: bool, sb: bool, hi: bool) -> u32 {
    let c = if sa || sb {
        i64::from(c as i32)
    } else {
        i64::from(c)
    };
    let (va, vb) = (lanes(a, 2, sa), lanes(b, 4, sb));
    let first = if hi { 2 } else { 0 };
    (c + (0..2).map(|k| va[k] * vb[first + k]).sum::<i64>()) as u32
}

/// `prmt` from the PTX ISA's tables: the generic selector nibbles, or per mode the source
/// bytes of d.b3 d.b2 d.b1 d.b0 for each value of c & 3.
fn prmt(a: u32, b: u32, c: u32, mode: Option<&str>) -> u32 {
    let src = (u64::from(b) << 32) | u64::from(a);
    let byte = |i: u32| ((src >> (8 * i)) & 0xFF) as u32;
    let Some(mode) = mode else {
        return (0..4).fold(0, |d, i| {
            let sel = (c >> (4 * i)) & 0xF;
            let v = byte(sel & 7);
            let v = if sel & 8 != 0 {
                if v & 0x80 != 0 {
                    0xFF
                } else {
                    0
                }
            } else {
                v
            };
            d | (v << (8 * i))
        });
    };
    let table: [&str; 4] = match mode {
        "f4e" => ["3210", "4321", "5432", "6543"],
        "b4e" => ["5670", "6701", "7012", "0123"],
        "rc8" => ["0000", "1111", "2222", "3333"],
        "ecl" => ["3210", "3211", "3222", "3333"],
        "ecr" => ["0000", "1110", "2210", "3210"],
        "rc16" => ["1010", "3232", "1010", "3232"],
        _ => unreachable!(),
    };
    let row = table[(c & 3) as usize].as_bytes();
    (0..4).fold(0, |d, i| {
        let sel = u32::from(row[3 - i] - b'0');
        d | (byte(sel) << (8 * i))
    })
}

/// Every output of the kernel for one thread's inputs.
fn reference(a: u32, b: u32, c: u32) -> [u32; OUTS] {
    let (p, w) = (c & 63, (c >> 8) & 63);
    let ca = (u64::from(c) << 32) | u64::from(a);
    let mut out = vec![
        mul24(a, b, false) as u32,
        (mul24(a, b, false) >> 16) as u32,
        mul24(a, b, true) as u32,
        (mul24(a, b, true) >> 16) as u32,
        (mul24(a, b, false) as u32).wrapping_add(c),
        ((mul24(a, b, true) >> 16) as u32).wrapping_add(c),
        shf(a, b, c, true, false),
        shf(a, b, c, true, true),
        shf(a, b, c, false, false),
        shf(a, b, c, false, true),
        bfind(u64::from(a), 32, false, false),
        bfind(u64::from(a), 32, true, false),
        bfind(u64::from(a), 32, false, true),
        bfind(ca, 64, true, false),
        bfind(ca, 64, false, true),
        bmsk(p, w, false),
        bmsk(p, w, true),
        dp4a(a, b, c, false, false),
        dp4a(a, b, c, true, true),
        dp4a(a, b, c, false, true),
        dp2a(a, b, c, false, true, false),
        dp2a(a, b, c, true, false, true),
        prmt(a, b, c, None),
    ];
    for mode in ["f4e", "b4e", "rc8", "ecl", "ecr", "rc16"] {
        out.push(prmt(a, b, c, Some(mode)));
    }
    let ab = (u64::from(a) << 32) | u64::from(b);
    let sum = u128::from(ca) + u128::from(ab);
    out.extend([sum as u32, (sum >> 32) as u32, (sum >> 64) as u32]);
    let diff = ca.wrapping_sub(ab);
    let borrow = u32::from(ca < ab);
    out.extend([diff as u32, (diff >> 32) as u32, 0u32.wrapping_sub(borrow)]);
    let prod = u128::from(ca) * u128::from(b);
    out.extend([prod as u32, (prod >> 32) as u32, (prod >> 64) as u32]);
    let low = u64::from(a) + u64::from(b);
    let cb = (u64::from(c) << 32) | u64::from(b);
    let wide = u128::from(ca) + u128::from(cb) + u128::from(low >> 32);
    out.extend([
        low as u32,
        wide as u32,
        (wide >> 32) as u32,
        (wide >> 64) as u32,
    ]);
    let hi = ((i64::from(a as i32) * i64::from(b as i32)) >> 32) as u32;
    let (mad_hi, carry) = hi.overflowing_add(c);
    out.push(mad_hi);
    out.push(
        a.wrapping_mul(c)
            .wrapping_add(b)
            .wrapping_add(u32::from(carry)),
    );
    out.try_into().unwrap()
}

/// Inputs: edge values in every combination, then random words (xorshift), with shift
/// amounts and bmsk positions drawn small half of the time.
fn inputs(n: usize) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let edges = [
        0u32,
        1,
        0x7F,
        0x80,
        0xFF,
        0x7FFF_FFFF,
        0x8000_0000,
        u32::MAX,
        0x00FF_FFFF,
        0x0080_0000,
    ];
    let small = [0u32, 1, 8, 16, 31, 32, 33, 63, 0x1F1F, 0x2020];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u32
    };
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        if i < edges.len() * small.len() {
            a.push(edges[i % edges.len()]);
            b.push(edges[(i / edges.len() + i) % edges.len()]);
            c.push(small[i / edges.len()]);
        } else {
            a.push(next());
            b.push(next());
            let r = next();
            c.push(if i % 2 == 0 { r & 0x3F3F } else { r });
        }
    }
    (a, b, c)
}

#[test]
fn every_output_matches_the_isa_semantics() {
    let module = Module::parse(KERNEL).unwrap_or_else(|e| panic!("{e}"));
    let (threads, ctas) = (128usize, 4usize);
    let n = threads * ctas;
    let (a, b, c) = inputs(n);
    let mut mem = DeviceMemory::new();
    let upload = |mem: &mut DeviceMemory, v: &[u32], label: &str| {
        let at = mem.alloc(4 * v.len(), label);
        mem.write(at, bytemuck::cast_slice(v)).unwrap();
        at
    };
    let (da, db, dc) = (
        upload(&mut mem, &a, "a"),
        upload(&mut mem, &b, "b"),
        upload(&mut mem, &c, "c"),
    );
    let out = mem.alloc(4 * OUTS * n, "out");
    let params: Vec<u8> = [da, db, dc, out]
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .collect();
    let dims = LaunchDims {
        grid: [ctas as u32, 1, 1],
        block: [threads as u32, 1, 1],
        dynamic_shared_bytes: 0,
    };
    launch(
        &module,
        "int_ext",
        &dims,
        &params,
        &mut mem,
        &Checks::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut got = vec![0u32; OUTS * n];
    mem.read(out, bytemuck::cast_slice_mut(&mut got)).unwrap();
    let names: Vec<&str> = KERNEL
        .lines()
        .filter_map(|l| l.strip_prefix("//   "))
        .collect();
    for t in 0..n {
        let want = reference(a[t], b[t], c[t]);
        for j in 0..OUTS {
            assert_eq!(
                got[t * OUTS + j],
                want[j],
                "output {j} ({}) for a {:#x}, b {:#x}, c {:#x}",
                names.get(j).unwrap_or(&"a carry chain"),
                a[t],
                b[t],
                c[t]
            );
        }
    }
}

#[test]
fn reading_the_carry_flag_before_any_cc_instruction_is_reported() {
    let text = ".version 8.0\n.target sm_80\n.address_size 64\n\
        .visible .entry k(.param .u64 out)\n{\n .reg .b32 %r<3>;\n .reg .b64 %rd<2>;\n\
        mov.u32 %r1, 5;\n addc.u32 %r2, %r1, %r1;\n ld.param.u64 %rd1, [out];\n\
        st.global.u32 [%rd1], %r2;\n ret;\n}\n";
    let module = Module::parse(text).unwrap_or_else(|e| panic!("{e}"));
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4, "out");
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [1, 1, 1],
        dynamic_shared_bytes: 0,
    };
    let e = launch(
        &module,
        "k",
        &dims,
        &out.to_le_bytes(),
        &mut mem,
        &Checks::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("CC.CF"), "{e}");
}

#[test]
fn malformed_forms_are_refused_with_the_line() {
    for (inst, why) in [
        ("shf.l.b32 %r1, %r1, %r1, %r1;", "shf needs .clamp or .wrap"),
        ("mul24.u32 %r1, %r1, %r1;", "mul24 needs .lo or .hi"),
        ("dp4a.u32 %r1, %r1, %r1, %r1;", "dp4a takes two types"),
        (
            "bmsk.wrap.b64 %r1, %r1, %r1;",
            "bmsk does not take this type",
        ),
        ("mul.lo.cc.u32 %r1, %r1, %r1;", "unsupported modifier `.cc`"),
    ] {
        let text = format!(
            ".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry k()\n{{\n .reg .b32 %r<2>;\n {inst}\n}}\n"
        );
        let e = match Module::parse(&text) {
            Ok(_) => panic!("{inst} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(why) && e.contains("line 7"), "{inst}: {e}");
    }
}
