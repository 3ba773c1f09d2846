//! The kernel parameter layout (`frugal_ptx::launch::layout`, which the emulator's parser,
//! the typed launchers and the runtime's packing all use) against ptxas's: each kernel
//! below is assembled to a cubin and the offset and size of every parameter is read from
//! the cubin's `.nv.info.<kernel>` section (`EIATTR_KPARAM_INFO` records), which is what
//! the driver places the parameter bytes by.
//!
//! The kernels mix what trips a layout: `.ptr .align N` pointers (N is the pointee's
//! alignment, not the parameter's), a 64-byte aligned 128-byte array (a `CUtensorMap`, whose
//! place depends on the target's constant-bank base), 16- and 8-bit parameters, arrays
//! with and without `.align`, and a declared alignment below the type's.
//!
//! Needs ptxas (`$FRUGAL_PTXAS` or PATH; `scripts/ensure-ptxas.sh`): without one the tests
//! fail and say so.

use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, Module, ParamInfo};
use frugal_ptx::launch::{pack, Arg, Param};
use frugal_ptx::ptxas::Ptxas;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// Kernels whose bodies read every parameter and store it (so the emulator run below
/// checks that each parameter arrives where ptxas put it).
const MIXED: &str = r#"
.version 8.8
.target sm_80
.address_size 64

// out[0] = a, out[1] = c, out[2] = tmap[0..4], out[3] = tmap[124..128], out[4] = h, out[5] = d
.visible .entry mixed(
    .param .u32 a,
    .param .u64 .ptr .global .align 16 out,
    .param .u16 c,
    .param .align 64 .b8 tmap[128],
    .param .f16 h,
    .param .u8 d
)
{
    .reg .b16 %rs<4>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<2>;
    ld.param.u64 %rd1, [out];
    cvta.to.global.u64 %rd1, %rd1;
    ld.param.u32 %r1, [a];
    st.global.u32 [%rd1], %r1;
    ld.param.u16 %rs1, [c];
    cvt.u32.u16 %r2, %rs1;
    st.global.u32 [%rd1+4], %r2;
    ld.param.u32 %r3, [tmap];
    st.global.u32 [%rd1+8], %r3;
    ld.param.u32 %r4, [tmap+124];
    st.global.u32 [%rd1+12], %r4;
    ld.param.b16 %rs2, [h];
    cvt.u32.u16 %r5, %rs2;
    st.global.u32 [%rd1+16], %r5;
    ld.param.u8 %rs3, [d];
    cvt.u32.u16 %r6, %rs3;
    st.global.u32 [%rd1+20], %r6;
    ret;
}

// out[0] = n, out[1] = t[0..4], out[2] = (u32) x, out[3] = s[8..12], out[4] = k
.visible .entry pointers(
    .param .u8 n,
    .param .u64 .ptr .align 4 out,
    .param .align 32 .b8 t[40],
    .param .f64 x,
    .param .align 2 .u64 y,
    .param .u64 .ptr .shared .align 128 sh,
    .param .b8 s[12],
    .param .align 16 .u32 k
)
{
    .reg .b16 %rs<2>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<4>;
    .reg .f64 %fd<2>;
    ld.param.u64 %rd1, [out];
    cvta.to.global.u64 %rd1, %rd1;
    ld.param.u8 %rs1, [n];
    cvt.u32.u16 %r1, %rs1;
    st.global.u32 [%rd1], %r1;
    ld.param.u32 %r2, [t];
    st.global.u32 [%rd1+4], %r2;
    ld.param.f64 %fd1, [x];
    cvt.rzi.u32.f64 %r3, %fd1;
    st.global.u32 [%rd1+8], %r3;
    ld.param.u32 %r4, [s+8];
    st.global.u32 [%rd1+12], %r4;
    ld.param.u32 %r5, [k];
    st.global.u32 [%rd1+16], %r5;
    ld.param.u64 %rd2, [y];
    ld.param.u64 %rd3, [sh];
    ret;
}
"#;

/// Compute capabilities whose layout is checked, and the `-arch` ptxas compiles for.
const TARGETS: [(u32, &str); 3] = [(80, "sm_80"), (90, "sm_90a"), (100, "sm_100")];

fn ptxas() -> Ptxas {
    Ptxas::locate().unwrap_or_else(|e| panic!("{e}"))
}

/// Assembles `text` for `arch` and returns the cubin's bytes.
fn cubin(ptxas: &Ptxas, text: &str, arch: &str) -> Vec<u8> {
    static UNIQUE: AtomicU64 = AtomicU64::new(0);
    let stem = std::env::temp_dir().join(format!(
        "frugal-param-layout-{}-{}-{arch}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    ));
    let (ptx, out) = (stem.with_extension("ptx"), stem.with_extension("cubin"));
    let retargeted = text.replace(".target sm_80", &format!(".target {arch}"));
    std::fs::write(&ptx, retargeted).unwrap_or_else(|e| panic!("write {}: {e}", ptx.display()));
    let run = Command::new(ptxas.path())
        .arg(format!("-arch={arch}"))
        .arg("-o")
        .arg(&out)
        .arg(&ptx)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", ptxas.path().display()));
    assert!(
        run.status.success(),
        "ptxas -arch={arch} failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bytes = std::fs::read(&out).unwrap_or_else(|e| panic!("read {}: {e}", out.display()));
    let _ = std::fs::remove_file(&ptx);
    let _ = std::fs::remove_file(&out);
    bytes
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}
fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}
fn u64_at(b: &[u8], at: usize) -> usize {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize
}

/// The contents of each section of a 64-bit little-endian ELF file, by name.
fn sections(elf: &[u8]) -> BTreeMap<String, &[u8]> {
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not a 64-bit ELF file");
    let (shoff, shentsize) = (u64_at(elf, 0x28), u16_at(elf, 0x3a));
    let (shnum, shstrndx) = (u16_at(elf, 0x3c), u16_at(elf, 0x3e));
    let header = |i: usize| &elf[shoff + i * shentsize..shoff + (i + 1) * shentsize];
    // Section header: name (u32), type (u32), flags (u64), addr (u64), offset (u64), size (u64).
    let body = |h: &[u8]| {
        let (off, size) = (u64_at(h, 0x18), u64_at(h, 0x20));
        &elf[off..off + size]
    };
    let names = body(header(shstrndx));
    (0..shnum)
        .map(|i| {
            let h = header(i);
            let start = u32_at(h, 0);
            let len = names[start..].iter().position(|&c| c == 0).unwrap();
            let name = String::from_utf8_lossy(&names[start..start + len]).into_owned();
            (name, body(h))
        })
        .collect()
}

/// `(offset, size)` of each parameter by ordinal, from a `.nv.info.<kernel>` section.
///
/// The section is a sequence of 4-byte aligned records: format (u8), attribute (u8), then
/// for format 0x04 (`EIFMT_SVAL`) a u16 length and that many bytes, for the other formats
/// two more bytes. `EIATTR_KPARAM_INFO` (0x17) is an SVAL of 12 bytes: a u32 index, the
/// parameter's ordinal (u16) and offset (u16), then a u32 whose bits 18.. are its size.
fn kparam_info(info: &[u8]) -> BTreeMap<usize, (usize, usize)> {
    const EIFMT_SVAL: u8 = 0x04;
    const EIATTR_KPARAM_INFO: u8 = 0x17;
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i + 4 <= info.len() {
        let (format, attribute) = (info[i], info[i + 1]);
        if format != EIFMT_SVAL {
            i += 4;
            continue;
        }
        let len = u16_at(info, i + 2);
        let value = &info[i + 4..i + 4 + len];
        if attribute == EIATTR_KPARAM_INFO {
            assert_eq!(len, 12, "KPARAM_INFO record of {len} bytes");
            let (ordinal, offset) = (u16_at(value, 4), u16_at(value, 6));
            out.insert(ordinal, (offset, u32_at(value, 8) >> 18));
        }
        i += 4 + len;
    }
    out
}

/// ptxas's `(offset, size)` for every parameter of `kernel` in `cubin`, in order.
fn ptxas_layout(cubin: &[u8], kernel: &str) -> Vec<(usize, usize)> {
    let sections = sections(cubin);
    let name = format!(".nv.info.{kernel}");
    let info = sections
        .get(&name)
        .unwrap_or_else(|| panic!("the cubin has no {name}"));
    let records = kparam_info(info);
    assert_eq!(
        records.keys().copied().collect::<Vec<_>>(),
        (0..records.len()).collect::<Vec<_>>(),
        "{kernel}: parameter ordinals are not 0..n"
    );
    records.into_values().collect()
}

#[test]
fn offsets_and_sizes_match_ptxas_on_every_target() {
    let ptxas = ptxas();
    let module = Module::parse(MIXED).unwrap_or_else(|e| panic!("{e}"));
    for (sm, arch) in TARGETS {
        let bin = cubin(&ptxas, MIXED, arch);
        for kernel in module.kernel_names() {
            let ours: Vec<(usize, usize)> = module
                .params_for(kernel, sm)
                .unwrap()
                .iter()
                .map(|p| (p.offset, p.size))
                .collect();
            let theirs = ptxas_layout(&bin, kernel);
            assert_eq!(
                ours, theirs,
                "{kernel} on {arch}: ours vs ptxas's (offset, size)"
            );
        }
    }
    // The module's own target is sm_80: `params` is that layout.
    assert_eq!(
        module.params("mixed").unwrap(),
        module.params_for("mixed", 80).unwrap()
    );
}

#[test]
fn the_pointee_alignment_does_not_move_the_parameter() {
    let module = Module::parse(MIXED).unwrap_or_else(|e| panic!("{e}"));
    let params = module.params("pointers").unwrap();
    let find = |name: &str| params.iter().find(|p| p.name == name).unwrap().clone();
    // `.u64 .ptr .align 4` after one byte: at 8, aligned 8.
    assert_eq!((find("out").offset, find("out").align), (8, 8));
    // `.ptr .shared .align 128`: still 8.
    assert_eq!(find("sh").align, 8);
    // `.align 2 .u64`: the type's 8 wins.
    assert_eq!(find("y").align, 8);
}

/// Writes each value's little-endian bytes at the offset ptxas gave its parameter.
fn place(layout: &[(usize, usize)], values: &[&[u8]]) -> Vec<u8> {
    let end = layout.last().map_or(0, |&(o, s)| o + s);
    let mut buf = vec![0u8; end];
    for (&(offset, size), v) in layout.iter().zip(values) {
        assert!(v.len() <= size);
        buf[offset..offset + v.len()].copy_from_slice(v);
    }
    buf
}

#[test]
fn the_emulator_reads_each_parameter_where_ptxas_put_it() {
    let ptxas = ptxas();
    let bin = cubin(&ptxas, MIXED, "sm_80");
    let module = Module::parse(MIXED).unwrap_or_else(|e| panic!("{e}"));
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [1, 1, 1],
        dynamic_shared_bytes: 0,
    };
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(32, "out");
    let run = |mem: &mut DeviceMemory, kernel: &str, values: &[&[u8]]| -> Vec<u32> {
        let params = place(&ptxas_layout(&bin, kernel), values);
        launch(&module, kernel, &dims, &params, mem, &Checks::default())
            .unwrap_or_else(|e| panic!("{kernel}: {e}"));
        let mut bytes = [0u8; 32];
        mem.read(out, &mut bytes).unwrap();
        bytes
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let mut tmap = [0u8; 128];
    tmap[..4].copy_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
    tmap[124..].copy_from_slice(&0x0102_0304u32.to_le_bytes());
    let got = run(
        &mut mem,
        "mixed",
        &[
            &7u32.to_le_bytes(),
            &out.to_le_bytes(),
            &0xBEEFu16.to_le_bytes(),
            &tmap,
            &0x3C00u16.to_le_bytes(),
            &[0x5A],
        ],
    );
    assert_eq!(
        got[..6],
        [7, 0xBEEF, 0xA1B2_C3D4, 0x0102_0304, 0x3C00, 0x5A]
    );
    let mut s = [0u8; 12];
    s[8..].copy_from_slice(&0xCAFEu32.to_le_bytes());
    let got = run(
        &mut mem,
        "pointers",
        &[
            &[9],
            &out.to_le_bytes(),
            &0x1234_5678u32.to_le_bytes(),
            &1000.75f64.to_le_bytes(),
            &3u64.to_le_bytes(),
            &0u64.to_le_bytes(),
            &s,
            &77u32.to_le_bytes(),
        ],
    );
    assert_eq!(got[..5], [9, 0x1234_5678, 1000, 0xCAFE, 77]);
}

#[test]
fn the_packer_places_arguments_by_the_declaration() {
    // A kernel named by hand (the runtime's `Device::launch`) packs against the parsed
    // declaration: a pointer with a 16-byte pointee alignment after a u32 goes at 8 and the
    // u32 after it at 16, where ptxas reads them.
    let text = ".version 8.0\n.target sm_80\n.address_size 64\n\
        .visible .entry k(.param .u32 n, .param .u64 .ptr .global .align 16 p, .param .u32 m)\n{\n ret;\n}\n";
    let module = Module::parse(text).unwrap_or_else(|e| panic!("{e}"));
    let declared: Vec<ParamInfo> = module.params("k").unwrap();
    let offsets: Vec<usize> = declared.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [0, 8, 16]);
    let bytes = pack(
        "k",
        declared.iter().map(Param::declared),
        &[Arg::U32(5), Arg::Ptr(0x1000), Arg::U32(6)],
    )
    .unwrap();
    assert_eq!(bytes.len(), 20);
    assert_eq!(&bytes[8..16], &0x1000u64.to_le_bytes());
    assert_eq!(&bytes[16..20], &6u32.to_le_bytes());
    let bin = cubin(&ptxas(), text, "sm_80");
    assert_eq!(ptxas_layout(&bin, "k"), [(0, 4), (8, 8), (16, 4)]);
}
