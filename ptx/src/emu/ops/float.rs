//! Float family: `add`/`sub`/`mul`/`div`/`min`/`max`/`copysign`, `fma` (and `mad` on
//! floats), and the unary `abs`/`neg`/`sqrt`/`rsqrt`/`rcp`/`ex2`/`lg2`/`sin`/`cos`/`tanh`,
//! on f32, f64, f16, bf16 and the packed x2 types: decoding and execution. The rounding
//! itself is `rounding`'s.

use crate::emu::exec::Cta;
use crate::emu::inst::{FMods, FOp, FUnOp, Float, FloatUn, Fma, Op};
use crate::emu::operands::{Dec, Mods};
use crate::emu::rounding::{self, fin, fmax, fmin, fout, sat64};
use crate::emu::types::{fmt_of, Fmt, Rnd, Ty};
use crate::emu::warp::{map2, reg_lanes, Warp};
use crate::error::PtxError;

/// `add`, `sub`, `mul`, `div`, `min`, `max`, `copysign` on floats.
pub(in crate::emu) fn decode_binary(d: &mut Dec, m: &mut Mods, base: &str) -> Result<Op, PtxError> {
    let wide = m.one_of(&["lo", "hi", "wide"]);
    let fm = m.fmods();
    let ty = m.one_type()?;
    d.count(3)?;
    let op = match base {
        "add" => FOp::Add,
        "sub" => FOp::Sub,
        "mul" => FOp::Mul,
        "div" => FOp::Div,
        "min" => FOp::Min,
        "max" => FOp::Max,
        "copysign" => FOp::Copysign,
        _ => return Err(m.err("not a float operation")),
    };
    if wide.is_some() {
        return Err(m.err(".lo/.hi/.wide apply to integers only"));
    }
    let r = d.dst(0)?;
    let (a, b) = (d.src(1, ty)?, d.src(2, ty)?);
    Ok(Op::Float(Float {
        op,
        ty,
        m: fm,
        d: r,
        a,
        b,
    }))
}

/// `fma`, and `mad` with a float type.
pub(in crate::emu) fn decode_fma(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    let _wide = m.one_of(&["lo", "hi", "wide"]);
    let fm = m.fmods();
    let ty = m.one_type()?;
    d.count(4)?;
    let r = d.dst(0)?;
    let (a, b, c) = (d.src(1, ty)?, d.src(2, ty)?, d.src(3, ty)?);
    Ok(Op::Fma(Fma {
        ty,
        m: fm,
        d: r,
        a,
        b,
        c,
    }))
}

/// `abs`, `neg`, `sqrt`, `rsqrt`, `rcp`, `ex2`, `lg2`, `sin`, `cos`, `tanh`.
pub(in crate::emu) fn decode_unary(d: &mut Dec, m: &mut Mods, base: &str) -> Result<Op, PtxError> {
    let approx = m.inst.opcode.contains(".approx");
    let fm = m.fmods();
    let ty = m.one_type()?;
    d.count(2)?;
    let r = d.dst(0)?;
    let a = d.src(1, ty)?;
    let op = match base {
        "abs" => FUnOp::Abs,
        "neg" => FUnOp::Neg,
        "sqrt" => FUnOp::Sqrt,
        "rsqrt" => FUnOp::Rsqrt,
        "rcp" => FUnOp::Rcp,
        "ex2" => FUnOp::Ex2,
        "lg2" => FUnOp::Lg2,
        "sin" => FUnOp::Sin,
        "cos" => FUnOp::Cos,
        "tanh" => FUnOp::Tanh,
        _ => return Err(m.err("not a float operation")),
    };
    Ok(Op::FloatUn(FloatUn {
        op,
        ty,
        m: fm,
        approx,
        d: r,
        a,
    }))
}

impl Cta<'_> {
    pub(in crate::emu) fn exec_float(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Float,
    ) -> Result<(), PtxError> {
        let Float { op, ty, m, d, a, b } = i;
        if *ty == Ty::F32 && m.rnd == Rnd::Rn && !m.ftz && !m.sat && !m.nan {
            return self.float_f32_rn(w, exec, i);
        }
        lanes!(exec, l, {
            let (x, y) = (self.val(w, *a, l), self.val(w, *b, l));
            let v = match fmt_of(*ty) {
                Some(f) => per_half(*ty, |x, y, _| float_bin(*op, f, *m, x, y), x, y, 0),
                None => float_bin64(*op, m.rnd, m.sat, m.nan, x, y),
            };
            w.set(*d, l, v);
        });
        Ok(())
    }
    /// The common case, f32 to nearest without modifiers: one loop per operation.
    fn float_f32_rn(&mut self, w: &mut Warp, exec: u32, i: &Float) -> Result<(), PtxError> {
        let Float { op, m, d, a, b, .. } = i;
        let (x, y) = (self.gather(w, *a, exec), self.gather(w, *b, exec));
        let out = reg_lanes(w, *d);
        let f = |v: u64| f32::from_bits(v as u32);
        match op {
            FOp::Add => map2(exec, &x, &y, out, |p, q| canon32(f(p) + f(q))),
            FOp::Sub => map2(exec, &x, &y, out, |p, q| canon32(f(p) - f(q))),
            FOp::Mul => map2(exec, &x, &y, out, |p, q| canon32(f(p) * f(q))),
            _ => map2(exec, &x, &y, out, |p, q| float_bin(*op, Fmt::F32, *m, p, q)),
        }
        Ok(())
    }

    pub(in crate::emu) fn exec_fma(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Fma,
    ) -> Result<(), PtxError> {
        let Fma { ty, m, d, a, b, c } = i;
        if *ty == Ty::F32 && m.rnd == Rnd::Rn && !m.ftz && !m.sat {
            return self.fma_f32_rn(w, exec, i);
        }
        lanes!(exec, l, {
            let (x, y, z) = (self.val(w, *a, l), self.val(w, *b, l), self.val(w, *c, l));
            let v = match fmt_of(*ty) {
                Some(Fmt::F32) if m.rnd == Rnd::Rn && !m.ftz && !m.sat => fma32_rn(
                    f32::from_bits(x as u32),
                    f32::from_bits(y as u32),
                    f32::from_bits(z as u32),
                ),
                Some(f) => per_half(
                    *ty,
                    |x, y, z| {
                        let (v, r) = rounding::fma_resid_narrow(
                            fin(x, f, m.ftz),
                            fin(y, f, m.ftz),
                            fin(z, f, m.ftz),
                        );
                        fout(rounding::round_f64(v, r, m.rnd, f), f, m.ftz, m.sat)
                    },
                    x,
                    y,
                    z,
                ),
                // f64 fma: correctly rounded to nearest; directed modes use the
                // nearest result too (no kernel of the project needs them).
                None => sat64(
                    f64::from_bits(x).mul_add(f64::from_bits(y), f64::from_bits(z)),
                    m.sat,
                )
                .to_bits(),
            };
            w.set(*d, l, v);
        });
        Ok(())
    }
    /// The common case, f32 to nearest without modifiers: no per-lane dispatch.
    fn fma_f32_rn(&mut self, w: &mut Warp, exec: u32, i: &Fma) -> Result<(), PtxError> {
        let Fma { d, a, b, c, .. } = i;
        let (x, y, z) = (
            self.gather(w, *a, exec),
            self.gather(w, *b, exec),
            self.gather(w, *c, exec),
        );
        let out = reg_lanes(w, *d);
        let f = |v: u64| f32::from_bits(v as u32);
        lanes!(exec, l, {
            out[l] = fma32_rn(f(x[l]), f(y[l]), f(z[l]));
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_float_un(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &FloatUn,
    ) -> Result<(), PtxError> {
        let FloatUn {
            op,
            ty,
            m,
            approx: _,
            d,
            a,
        } = i;
        lanes!(exec, l, {
            let x = self.val(w, *a, l);
            let v = match fmt_of(*ty) {
                Some(f) => per_half(
                    *ty,
                    |x, _, _| float_un(*op, f, m.rnd, m.ftz, m.sat, x),
                    x,
                    0,
                    0,
                ),
                None => float_un64(*op, m.rnd, m.sat, x),
            };
            w.set(*d, l, v);
        });
        Ok(())
    }
}

/// Canonical NaN for f32 results, the value bits otherwise.
#[inline]
fn canon32(v: f32) -> u64 {
    if v.is_nan() {
        Fmt::F32.nan()
    } else {
        u64::from(v.to_bits())
    }
}

/// f32 a·b + c rounded to nearest. The product is exact in f64 and TwoSum gives the sum
/// exactly as `s + err`; rounding `s` to f32 is then correct unless `s` sits exactly on an
/// f32 rounding midpoint (or in the subnormal range), where the slow path decides.
#[inline]
fn fma32_rn(a: f32, b: f32, c: f32) -> u64 {
    let (s, err) = rounding::fma_resid_narrow(f64::from(a), f64::from(b), f64::from(c));
    let midpoint = (s.to_bits() & 0x1FFF_FFFF) == 0x1000_0000;
    if err == 0 || (!midpoint && s.abs() >= f64::from(f32::MIN_POSITIVE)) {
        canon32(s as f32)
    } else {
        rounding::round_f64(s, err, Rnd::Rn, Fmt::F32)
    }
}

/// A binary float operation on one scalar of format `fmt`.
fn float_bin(op: FOp, fmt: Fmt, m: FMods, a: u64, b: u64) -> u64 {
    let FMods { rnd, ftz, sat, nan } = m;
    // Fast path: Rust's f32 arithmetic is IEEE round-to-nearest, as PTX's default.
    if fmt == Fmt::F32 && rnd == Rnd::Rn && !ftz && !sat {
        let (x, y) = (f32::from_bits(a as u32), f32::from_bits(b as u32));
        match op {
            FOp::Add => return canon32(x + y),
            FOp::Sub => return canon32(x - y),
            FOp::Mul => return canon32(x * y),
            FOp::Div => return canon32(x / y),
            _ => {}
        }
    }
    let (x, y) = (fin(a, fmt, ftz), fin(b, fmt, ftz));
    let (v, r) = match op {
        FOp::Add => rounding::add_resid(x, y),
        FOp::Sub => rounding::add_resid(x, -y),
        FOp::Mul => rounding::mul_resid(x, y),
        FOp::Div => rounding::div_resid(x, y),
        FOp::Min => (fmin(x, y, nan), 0),
        FOp::Max => (fmax(x, y, nan), 0),
        FOp::Copysign => (y.abs().copysign(x), 0),
    };
    let bits = if op == FOp::Copysign && !y.is_nan() {
        (b & !fmt.sign_bit()) | (a & fmt.sign_bit())
    } else {
        rounding::round_f64(v, r, rnd, fmt)
    };
    fout(bits, fmt, ftz, sat)
}

fn float_bin64(op: FOp, rnd: Rnd, sat: bool, nan: bool, a: u64, b: u64) -> u64 {
    let (x, y) = (f64::from_bits(a), f64::from_bits(b));
    let (v, r) = match op {
        FOp::Add => rounding::add_resid(x, y),
        FOp::Sub => rounding::add_resid(x, -y),
        FOp::Mul => rounding::mul_resid(x, y),
        FOp::Div => rounding::div_resid(x, y),
        FOp::Min => (fmin(x, y, nan), 0),
        FOp::Max => (fmax(x, y, nan), 0),
        FOp::Copysign => (y.copysign(x), 0),
    };
    sat64(rounding::round_f64_directed(v, r, rnd), sat).to_bits()
}

/// Applies a per-half operation to a packed f16x2/bf16x2 value or a scalar one.
fn per_half(ty: Ty, f: impl Fn(u64, u64, u64) -> u64, a: u64, b: u64, c: u64) -> u64 {
    if matches!(ty, Ty::F16x2 | Ty::Bf16x2) {
        let lo = f(a & 0xFFFF, b & 0xFFFF, c & 0xFFFF) & 0xFFFF;
        let hi = f((a >> 16) & 0xFFFF, (b >> 16) & 0xFFFF, (c >> 16) & 0xFFFF) & 0xFFFF;
        lo | (hi << 16)
    } else {
        f(a, b, c)
    }
}

fn float_un(op: FUnOp, fmt: Fmt, rnd: Rnd, ftz: bool, sat: bool, a: u64) -> u64 {
    let x = fin(a, fmt, ftz);
    let bits = match op {
        FUnOp::Abs => {
            if x.is_nan() {
                fmt.nan()
            } else {
                rounding::round_f64(x.abs(), 0, Rnd::Rn, fmt)
            }
        }
        FUnOp::Neg => {
            if x.is_nan() {
                fmt.nan()
            } else {
                rounding::round_f64(-x, 0, Rnd::Rn, fmt)
            }
        }
        FUnOp::Sqrt => {
            let (v, r) = rounding::sqrt_resid(x);
            rounding::round_f64(v, r, rnd, fmt)
        }
        FUnOp::Rcp => {
            let (v, r) = rounding::div_resid(1.0, x);
            rounding::round_f64(v, r, rnd, fmt)
        }
        FUnOp::Rsqrt => rounding::round_f64(1.0 / x.sqrt(), 0, Rnd::Rn, fmt),
        FUnOp::Ex2 => rounding::round_f64(x.exp2(), 0, Rnd::Rn, fmt),
        FUnOp::Lg2 => rounding::round_f64(x.log2(), 0, Rnd::Rn, fmt),
        FUnOp::Sin => rounding::round_f64(x.sin(), 0, Rnd::Rn, fmt),
        FUnOp::Cos => rounding::round_f64(x.cos(), 0, Rnd::Rn, fmt),
        FUnOp::Tanh => rounding::round_f64(x.tanh(), 0, Rnd::Rn, fmt),
    };
    fout(bits, fmt, ftz, sat)
}

fn float_un64(op: FUnOp, rnd: Rnd, sat: bool, a: u64) -> u64 {
    let x = f64::from_bits(a);
    let v = match op {
        FUnOp::Abs => x.abs(),
        FUnOp::Neg => -x,
        FUnOp::Sqrt => {
            let (v, r) = rounding::sqrt_resid(x);
            rounding::round_f64_directed(v, r, rnd)
        }
        FUnOp::Rcp => {
            let (v, r) = rounding::div_resid(1.0, x);
            rounding::round_f64_directed(v, r, rnd)
        }
        FUnOp::Rsqrt => 1.0 / x.sqrt(),
        FUnOp::Ex2 => x.exp2(),
        FUnOp::Lg2 => x.log2(),
        FUnOp::Sin => x.sin(),
        FUnOp::Cos => x.cos(),
        FUnOp::Tanh => x.tanh(),
    };
    sat64(v, sat).to_bits()
}
