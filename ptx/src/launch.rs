//! The one kernel argument type ([`Arg`]) and the one parameter packer ([`pack`]).
//!
//! Every launch, whether a typed launcher's [`crate::kernels::KernelSpec`] built it or a
//! caller names a kernel and its arguments by hand (the runtime's `Device::launch`, checked
//! against the parsed module's declarations), packs its parameters here: each parameter at
//! the offset the layout rule ([`layout`], ptxas's) gives it, little-endian. CUDA receives
//! that buffer as `CU_LAUNCH_PARAM_BUFFER_POINTER`; the emulator receives the same bytes.

use crate::emu::ParamInfo;
use crate::error::PtxError;

/// The PTX type of one kernel parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// A device address (`.u64`).
    Ptr,
    /// `.u32`.
    U32,
    /// `.s32`.
    I32,
    /// `.u64` count.
    U64,
    /// `.s64`.
    I64,
    /// `.f32`.
    F32,
    /// A tensor map, `.param .align 64 .b8 name[128]` (for `cp.async.bulk.tensor`).
    TensorMap,
}

impl ParamKind {
    /// Size in bytes.
    pub fn size(self) -> usize {
        match self {
            ParamKind::Ptr | ParamKind::U64 | ParamKind::I64 => 8,
            ParamKind::U32 | ParamKind::I32 | ParamKind::F32 => 4,
            ParamKind::TensorMap => crate::tensor_map::TENSOR_MAP_BYTES,
        }
    }

    /// Alignment in bytes (the size, except the 64-byte-aligned tensor map).
    pub fn align(self) -> usize {
        match self {
            ParamKind::TensorMap => 64,
            k => k.size(),
        }
    }

    /// The name errors use.
    pub fn name(self) -> &'static str {
        match self {
            ParamKind::Ptr => "pointer",
            ParamKind::U32 => "u32",
            ParamKind::I32 => "i32",
            ParamKind::U64 => "u64",
            ParamKind::I64 => "i64",
            ParamKind::F32 => "f32",
            ParamKind::TensorMap => "tensor map",
        }
    }
}

/// One kernel argument, in the order of the kernel's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// A device address.
    Ptr(u64),
    /// 32-bit unsigned.
    U32(u32),
    /// 32-bit signed.
    I32(i32),
    /// 64-bit unsigned.
    U64(u64),
    /// 64-bit signed.
    I64(i64),
    /// 32-bit float.
    F32(f32),
    /// The 128 bytes of a tensor map (`frugal_runtime::tensor_map::encode_tensor_map`).
    TensorMap([u8; 128]),
}

impl Arg {
    /// The parameter type this argument fills.
    pub fn kind(self) -> ParamKind {
        match self {
            Arg::Ptr(_) => ParamKind::Ptr,
            Arg::U32(_) => ParamKind::U32,
            Arg::I32(_) => ParamKind::I32,
            Arg::U64(_) => ParamKind::U64,
            Arg::I64(_) => ParamKind::I64,
            Arg::F32(_) => ParamKind::F32,
            Arg::TensorMap(_) => ParamKind::TensorMap,
        }
    }

    /// Writes the little-endian bytes into `out` (exactly `self.kind().size()` long).
    fn write(self, out: &mut [u8]) {
        match self {
            Arg::Ptr(v) | Arg::U64(v) => out.copy_from_slice(&v.to_le_bytes()),
            Arg::I64(v) => out.copy_from_slice(&v.to_le_bytes()),
            Arg::U32(v) => out.copy_from_slice(&v.to_le_bytes()),
            Arg::I32(v) => out.copy_from_slice(&v.to_le_bytes()),
            Arg::F32(v) => out.copy_from_slice(&v.to_le_bytes()),
            Arg::TensorMap(b) => out.copy_from_slice(&b),
        }
    }
}

/// One parameter as the packer checks it: from a spec (type known, offset derived) or from
/// a parsed module's declaration (size, alignment and offset known, type not).
#[derive(Clone, Copy, Debug)]
pub struct Param<'a> {
    /// Name as declared (without the `<kernel>_param_` prefix for a spec).
    pub name: &'a str,
    /// Size in bytes.
    pub size: usize,
    /// Alignment in bytes.
    pub align: usize,
    /// The offset the module declares, when a parse is at hand.
    pub declared_offset: Option<usize>,
    /// The type, when a spec gives it (a parse knows only the size).
    pub kind: Option<ParamKind>,
}

impl<'a> Param<'a> {
    /// A parameter of known type (a spec's entry).
    pub fn typed(name: &'a str, kind: ParamKind) -> Param<'a> {
        Param {
            name,
            size: kind.size(),
            align: kind.align(),
            declared_offset: None,
            kind: Some(kind),
        }
    }

    /// A parameter as the emulator's parser declares it.
    pub fn declared(info: &'a ParamInfo) -> Param<'a> {
        Param {
            name: &info.name,
            size: info.size,
            align: info.align,
            declared_offset: Some(info.offset),
            kind: None,
        }
    }
}

/// `at` rounded up to a multiple of `align`.
pub fn align_up(at: usize, align: usize) -> usize {
    at.div_ceil(align.max(1)) * align.max(1)
}

/// The compute capability whose parameter layout a module gets when nothing else says
/// (a module without a `.target`, and every typed launcher's spec): sm_80.
pub const DEFAULT_SM: u32 = 80;

/// Where kernel parameters start in constant bank 0 on compute capability `sm` (major*10 +
/// minor), modulo the largest alignment the layout needs: 0x160 up to sm_89, 0x210 on
/// sm_90, a multiple of 1024 from sm_100 on (as ptxas 12.9 lays them out; read from its
/// cubins by `ptx/tests/param_layout.rs`).
///
/// It matters because ptxas aligns a parameter's address in the bank, not its offset in
/// the parameter buffer: a `.param .align 64 .b8 tmap[128]` after one `.u32` sits at
/// offset 32 on sm_80 (0x160 + 32 = 6 x 64) and at 48 on sm_90 (0x210 + 48 = 9 x 64).
/// Alignments up to 16 come out the same on every target (each base is a multiple of 16).
pub fn param_bank_base(sm: u32) -> usize {
    match sm {
        0..=89 => 0x160,
        90..=99 => 0x210,
        _ => 0,
    }
}

/// A parameter's alignment: its declared `.align` (written before the type:
/// `.param .align 64 .b8 tmap[128]`) or the natural alignment of its element type,
/// whichever is larger (ptxas never places a `.u64` at less than 8, whatever `.align 2`
/// says). The `.align N` of a pointer parameter (`.param .u64 .ptr .global .align 16 p`)
/// is the alignment of the memory it points to and does not enter here: the parser
/// keeps it apart.
pub fn param_align(element_size: usize, declared: Option<usize>) -> usize {
    element_size.max(declared.unwrap_or(1)).max(1)
}

/// The offset of a parameter of alignment `align` that follows bytes `0..end` of the
/// parameter buffer, on compute capability `sm`: the first offset at or after `end` whose
/// address in constant bank 0 ([`param_bank_base`]) is a multiple of `align`.
pub fn place(end: usize, align: usize, sm: u32) -> usize {
    let base = param_bank_base(sm);
    align_up(base + end, align) - base
}

/// The layout of a kernel's parameters on compute capability `sm`: each `(name, size,
/// align)` (align as [`param_align`] gives it) placed after the previous one by
/// [`place`]. The one layout rule: the emulator's parser, [`crate::emu::Module::params_for`]
/// and every spec's offsets ([`crate::kernels::KernelSpec::offsets`]) come from here.
pub fn layout<'a, I>(params: I, sm: u32) -> Vec<ParamInfo>
where
    I: IntoIterator<Item = (&'a str, usize, usize)>,
{
    let mut end = 0usize;
    params
        .into_iter()
        .map(|(name, size, align)| {
            let offset = place(end, align, sm);
            end = offset + size;
            ParamInfo {
                name: name.to_string(),
                size,
                align,
                offset,
            }
        })
        .collect()
}

/// Packs `args` (one per parameter, in order) for `kernel` whose parameters are `params`.
///
/// # Errors
/// `BadLaunch` naming the kernel when the count differs (listing the parameters), an
/// argument's size or type differs from its parameter's, or a declared offset disagrees
/// with the packing rule.
pub fn pack<'a, I>(kernel: &str, params: I, args: &[Arg]) -> Result<Vec<u8>, PtxError>
where
    I: ExactSizeIterator<Item = Param<'a>> + Clone,
{
    pack_for(kernel, params, args, DEFAULT_SM)
}

/// [`pack`] for a kernel that runs on compute capability `sm`: parameters without a
/// declared offset (a spec's) are placed by [`place`] for `sm`. Only a parameter aligned
/// to more than 16 bytes (a tensor map, `.align 64`) lands differently on different
/// targets, so specs of such kernels must be packed for the device's `sm`.
///
/// # Errors
/// As [`pack`].
pub fn pack_for<'a, I>(kernel: &str, params: I, args: &[Arg], sm: u32) -> Result<Vec<u8>, PtxError>
where
    I: ExactSizeIterator<Item = Param<'a>> + Clone,
{
    let bad = |reason: String| PtxError::BadLaunch {
        kernel: kernel.to_string(),
        reason,
    };
    if params.len() != args.len() {
        let names: Vec<&str> = params.map(|p| p.name).collect();
        return Err(bad(format!(
            "{} argument(s) given, the kernel takes {} ({})",
            args.len(),
            names.len(),
            names.join(", ")
        )));
    }
    let mut buf = Vec::with_capacity(args.len() * 8);
    for (p, &a) in params.zip(args) {
        let given = a.kind();
        if given.size() != p.size {
            return Err(bad(format!(
                "parameter '{}' is {} bytes, but a {} ({} bytes) was given",
                p.name,
                p.size,
                given.name(),
                given.size()
            )));
        }
        if let Some(kind) = p.kind.filter(|&k| k != given) {
            return Err(bad(format!(
                "parameter '{}' is a {}, but a {} was given",
                p.name,
                kind.name(),
                given.name()
            )));
        }
        // A parsed declaration's offset already follows the layout rule for the target the
        // module was laid out for; a spec's parameters (natural alignment, at most 8) land
        // where every target puts them.
        let at = match p.declared_offset {
            Some(declared) if declared < buf.len() || declared % p.align.clamp(1, 16) != 0 => {
                return Err(bad(format!(
                    "parameter '{}' is declared at offset {} but the previous one ends at {} (align {})",
                    p.name,
                    declared,
                    buf.len(),
                    p.align
                )));
            }
            Some(declared) => declared,
            None => place(buf.len(), p.align, sm),
        };
        buf.resize(at + p.size, 0);
        a.write(&mut buf[at..]);
    }
    Ok(buf)
}

/// The packed size of a parsed kernel's parameters: the end of the last one.
pub fn declared_size(params: &[ParamInfo]) -> usize {
    params.last().map_or(0, |p| p.offset + p.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, size: usize, align: usize, offset: usize) -> ParamInfo {
        ParamInfo {
            name: name.into(),
            size,
            align,
            offset,
        }
    }

    fn pack_declared(params: &[ParamInfo], args: &[Arg]) -> Result<Vec<u8>, PtxError> {
        pack("k", params.iter().map(Param::declared), args)
    }

    #[test]
    fn packs_with_alignment_padding() {
        // (u32 n, u64 ptr, f32 s): ptr is padded to offset 8.
        let params = [
            info("n", 4, 4, 0),
            info("ptr", 8, 8, 8),
            info("s", 4, 4, 16),
        ];
        let buf = pack_declared(&params, &[Arg::U32(7), Arg::Ptr(0x1122), Arg::F32(2.0)]).unwrap();
        assert_eq!(buf.len(), 20);
        assert_eq!(declared_size(&params), 20);
        assert_eq!(&buf[0..4], &7u32.to_le_bytes());
        assert_eq!(&buf[4..8], &[0, 0, 0, 0]);
        assert_eq!(&buf[8..16], &0x1122u64.to_le_bytes());
        assert_eq!(&buf[16..20], &2.0f32.to_le_bytes());
    }

    #[test]
    fn a_tensor_map_packs_at_64_byte_alignment() {
        let params = [
            info("n", 4, 4, 0),
            info("tmap", 128, 64, 64),
            info("p", 8, 8, 192),
        ];
        let mut map = [0u8; 128];
        map[0] = 0xAB;
        map[127] = 0xCD;
        let buf = pack_declared(&params, &[Arg::U32(3), Arg::TensorMap(map), Arg::Ptr(9)]).unwrap();
        assert_eq!(buf.len(), 200);
        assert_eq!((buf[64], buf[191]), (0xAB, 0xCD));
        let typed = [
            Param::typed("n", ParamKind::U32),
            Param::typed("tmap", ParamKind::TensorMap),
        ];
        // Placed where its address in constant bank 0 is 64-byte aligned, as ptxas does:
        // offset 32 on sm_80 (bank base 0x160), 48 on sm_90 (0x210).
        let buf = pack("k", typed.into_iter(), &[Arg::U32(3), Arg::TensorMap(map)]).unwrap();
        assert_eq!((buf.len(), buf[32], buf[159]), (160, 0xAB, 0xCD));
        let buf = pack_for(
            "k",
            typed.into_iter(),
            &[Arg::U32(3), Arg::TensorMap(map)],
            90,
        )
        .unwrap();
        assert_eq!((buf.len(), buf[48], buf[175]), (176, 0xAB, 0xCD));
    }

    #[test]
    fn mismatches_are_errors() {
        let params = [info("ptr", 8, 8, 0), info("n", 8, 8, 8)];
        let e = pack_declared(&params, &[Arg::Ptr(1)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 argument(s) given, the kernel takes 2 (ptr, n)"),
            "{e}"
        );
        let e = pack_declared(&params, &[Arg::Ptr(1), Arg::U32(3)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("parameter 'n' is 8 bytes, but a u32 (4 bytes)"),
            "{e}"
        );
        let skewed = [info("ptr", 8, 8, 0), info("n", 8, 8, 12)];
        let e = pack_declared(&skewed, &[Arg::Ptr(1), Arg::U64(3)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("declared at offset 12 but the previous one ends at 8 (align 8)"),
            "{e}"
        );
        let overlapping = [info("ptr", 8, 8, 0), info("n", 8, 8, 4)];
        let e = pack_declared(&overlapping, &[Arg::Ptr(1), Arg::U64(3)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("declared at offset 4 but the previous one ends at 8"),
            "{e}"
        );
    }

    #[test]
    fn layout_aligns_the_address_in_the_constant_bank() {
        // One u32, then a 64-byte aligned 128-byte array (a CUtensorMap), then a u8.
        let shapes = [("a", 4, 4), ("tmap", 128, 64), ("c", 1, 1)];
        let offsets = |sm| -> Vec<usize> { layout(shapes, sm).iter().map(|p| p.offset).collect() };
        // 0x160 + 32 = 384 = 6 x 64 on sm_80; 0x210 + 48 = 576 = 9 x 64 on sm_90.
        assert_eq!(offsets(80), [0, 32, 160]);
        assert_eq!(offsets(90), [0, 48, 176]);
        assert_eq!(offsets(100), [0, 64, 192]);
        // Natural alignment is a floor; a larger declared one wins.
        assert_eq!(param_align(8, Some(2)), 8);
        assert_eq!(param_align(1, Some(64)), 64);
        assert_eq!(param_align(2, None), 2);
    }

    #[test]
    fn undeclared_offsets_follow_the_target() {
        // A u32 then a 64-byte aligned 8-byte parameter (as a spec would give it).
        let params = || {
            [
                Param::typed("n", ParamKind::U32),
                Param {
                    name: "wide",
                    size: 8,
                    align: 64,
                    declared_offset: None,
                    kind: None,
                },
            ]
            .into_iter()
        };
        let args = [Arg::U32(1), Arg::U64(2)];
        assert_eq!(pack_for("k", params(), &args, 80).unwrap().len(), 40);
        assert_eq!(pack_for("k", params(), &args, 90).unwrap().len(), 56);
        assert_eq!(pack("k", params(), &args).unwrap().len(), 40);
    }

    #[test]
    fn typed_parameters_check_the_type() {
        let params = [("n", ParamKind::U64)];
        let typed = || params.iter().map(|&(n, k)| Param::typed(n, k));
        let e = pack("k", typed(), &[Arg::Ptr(3)]).unwrap_err().to_string();
        assert!(
            e.contains("parameter 'n' is a u64, but a pointer was given"),
            "{e}"
        );
        assert_eq!(
            pack("k", typed(), &[Arg::U64(3)]).unwrap(),
            3u64.to_le_bytes()
        );
    }
}
