//! The one kernel argument type ([`Arg`]) and the one parameter packer ([`pack`]).
//!
//! Every launch, whether a typed launcher's [`crate::kernels::KernelSpec`] built it or a
//! caller names a kernel and its arguments by hand (the runtime's `Device::launch`, checked
//! against the parsed module's declarations), packs its parameters here: each parameter at
//! the previous end rounded up to its alignment (the PTX rule), little-endian. CUDA receives
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

/// `at` rounded up to a multiple of `align` (the PTX parameter placement rule).
pub fn align_up(at: usize, align: usize) -> usize {
    at.div_ceil(align.max(1)) * align.max(1)
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
        let at = align_up(buf.len(), p.align);
        if let Some(declared) = p.declared_offset.filter(|&d| d != at) {
            return Err(bad(format!(
                "parameter '{}' is declared at offset {} but packs at {} (align {})",
                p.name, declared, at, p.align
            )));
        }
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
        let buf = pack("k", typed.into_iter(), &[Arg::U32(3), Arg::TensorMap(map)]).unwrap();
        assert_eq!((buf.len(), buf[64]), (192, 0xAB));
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
        assert!(e.contains("declared at offset 12 but packs at 8"), "{e}");
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
