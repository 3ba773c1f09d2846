//! TMA PTX as a third-party compiler writes it: Triton 3.9 compiled a kernel that sums
//! 64×64 fp16 tiles loaded by `cp.async.bulk.tensor` from a host tensor descriptor through
//! a 3-stage mbarrier ring (`elect.sync`, `mbarrier.arrive.expect_tx`, `try_wait.parity`,
//! `fence.proxy.async`, `ldmatrix` of the 128B-swizzled tiles), for capability 90
//! (`tests/triton/gen_tma_sum.py` regenerates the two files). The emulator runs both the
//! software-pipelined and the warp-specialised versions and matches a reference sum, which
//! also checks the emulator's swizzle against the addresses Triton's `ldmatrix` reads;
//! with the map's swizzle wrong, or the expected transaction bytes wrong, it does not.
//! A third kernel, persistent over 32×32 f32 tiles, loads each with TMA and stores
//! `2x + 1` with a tensor store (`cp.async.bulk.tensor ... .bulk_group`, `commit_group`,
//! `wait_group.read`, `fence.proxy.async`).
//!
//! The files are Triton's output unchanged. Until the emulator accepts every construct of
//! compiler PTX (issue 21 part 1: `.section` debug blocks, one-element vector operands),
//! [`normalise`] strips the debug sections and `.loc`/`.file` lines and writes `{ %rN }`
//! as `%rN`; nothing of the kernel's logic is touched. (The files declare PTX 9.4, newer
//! than the ptxas this project fetches, so they are not re-assembled here.)

use frugal_ptx::emu::swizzle::Swizzle;
use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, Module};
use frugal_ptx::error::PtxError;
use frugal_ptx::tensor_map::{Interleave, L2Promotion, OobFill, TensorDataType, TensorMap};

const PIPELINED: &str = include_str!("triton/tma_sum_pipelined.ptx");
const WARP_SPECIALIZED: &str = include_str!("triton/tma_sum_warp_specialized.ptx");
const SCALE_STORE: &str = include_str!("triton/tma_scale_store.ptx");
/// Tiles summed.
const TILES: usize = 5;

/// The PTX without debug sections and line markers, one-element vectors unwrapped.
fn normalise(text: &str) -> String {
    let body = match text.find("\t.section") {
        Some(i) => &text[..i],
        None => text,
    };
    body.lines()
        .filter(|l| {
            let t = l.trim_start();
            !t.starts_with(".loc") && !t.starts_with(".file")
        })
        .map(|l| {
            let mut out = String::with_capacity(l.len());
            let mut rest = l;
            while let Some(i) = rest.find("{ %r") {
                let tail = &rest[i + 2..];
                match tail.find(" }") {
                    Some(j)
                        if tail[..j]
                            .chars()
                            .all(|c| c == '%' || c.is_ascii_alphanumeric()) =>
                    {
                        out.push_str(&rest[..i]);
                        out.push_str(&tail[..j]);
                        rest = &tail[j + 2..];
                    }
                    _ => {
                        out.push_str(&rest[..i + 2]);
                        rest = tail;
                    }
                }
            }
            out.push_str(rest);
            out
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn values() -> Vec<f32> {
    (0..TILES * 64 * 64)
        .map(|i| ((i * 7 + 3) % 17) as f32 - 8.0)
        .collect()
}

/// Dynamic shared memory each kernel needs (Triton's metadata `shared`): three stages of
/// 8 KiB tiles and their barriers when pipelined, two when warp-specialised.
const PIPELINED_SHARED: u32 = 16400;
const WARP_SPECIALIZED_SHARED: u32 = 8200;

/// Runs the kernel (with `shared` bytes of dynamic shared memory) with a map of the given
/// swizzle; the 64×64 f32 sum.
fn run(text: &str, shared: u32, swizzle: Swizzle) -> Result<Vec<f32>, PtxError> {
    let module = Module::parse(&normalise(text)).unwrap_or_else(|e| panic!("parse: {e}"));
    let vals = values();
    let halfs: Vec<u16> = vals
        .iter()
        .map(|&v| half::f16::from_f32(v).to_bits())
        .collect();
    let mut mem = DeviceMemory::new();
    let g = mem.alloc(halfs.len() * 2, "tiles");
    mem.write(g, bytemuck::cast_slice(&halfs))?;
    let out = mem.alloc(64 * 64 * 4, "out");
    let map = TensorMap {
        data_type: TensorDataType::F16,
        global_address: g,
        dims: vec![64, (TILES * 64) as u64],
        strides: vec![128],
        box_dims: vec![64, 64],
        element_strides: vec![1, 1],
        interleave: Interleave::None,
        swizzle,
        l2_promotion: L2Promotion::B128,
        oob_fill: OobFill::None,
    };
    // Triton expands the descriptor into (map, shape i32 ×2, strides i64 ×2), then the
    // kernel's own arguments, then its global and profile scratch pointers (unused here).
    let params = module.params("tma_sum")?;
    let size = params.iter().map(|p| p.offset + p.size).max().unwrap_or(0);
    let mut buf = vec![0u8; size];
    let mut put = |i: usize, b: &[u8]| {
        let o = params[i].offset;
        buf[o..o + b.len()].copy_from_slice(b);
    };
    put(0, &map.encode().unwrap());
    put(1, &((TILES * 64) as u32).to_le_bytes());
    put(2, &64u32.to_le_bytes());
    put(3, &64u64.to_le_bytes());
    put(4, &1u64.to_le_bytes());
    put(5, &out.to_le_bytes());
    put(6, &(TILES as u32).to_le_bytes());
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [128, 1, 1],
        dynamic_shared_bytes: shared,
    };
    launch(
        &module,
        "tma_sum",
        &dims,
        &buf,
        &mut mem,
        &Checks::default(),
    )?;
    let mut o = vec![0u8; 64 * 64 * 4];
    mem.read(out, &mut o)?;
    Ok(bytemuck::cast_slice(&o).to_vec())
}

fn reference() -> Vec<f32> {
    let vals = values();
    (0..64 * 64)
        .map(|rc| (0..TILES).map(|t| vals[t * 64 * 64 + rc]).sum())
        .collect()
}

#[test]
fn triton_tma_kernels_match_the_reference() {
    for (name, text, shared) in [
        ("pipelined", PIPELINED, PIPELINED_SHARED),
        (
            "warp-specialised",
            WARP_SPECIALIZED,
            WARP_SPECIALIZED_SHARED,
        ),
    ] {
        let got = run(text, shared, Swizzle::B128).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, reference(), "{name}");
    }
}

#[test]
fn a_map_with_the_wrong_swizzle_gives_wrong_sums() {
    for (text, shared) in [
        (PIPELINED, PIPELINED_SHARED),
        (WARP_SPECIALIZED, WARP_SPECIALIZED_SHARED),
    ] {
        assert_ne!(run(text, shared, Swizzle::None).unwrap(), reference());
    }
}

#[test]
fn fewer_expected_transaction_bytes_than_the_box_are_caught() {
    let text = PIPELINED.replace("], 8192;", "], 4096;");
    match run(&text, PIPELINED_SHARED, Swizzle::B128) {
        Err(PtxError::AsyncMisuse { detail, .. }) => {
            assert!(detail.contains("tx-count underflow"), "{detail}")
        }
        other => panic!("expected a tx-count underflow, got {other:?}"),
    }
}

#[test]
fn a_persistent_triton_kernel_with_tma_stores_matches_the_reference() {
    let module = Module::parse(&normalise(SCALE_STORE)).unwrap_or_else(|e| panic!("parse: {e}"));
    let tiles = 5usize;
    let n = tiles * 32 * 32;
    let src: Vec<f32> = (0..n).map(|i| (i % 23) as f32 * 0.5 - 3.0).collect();
    let mut mem = DeviceMemory::new();
    let (a, b) = (mem.alloc(n * 4, "src"), mem.alloc(n * 4, "dst"));
    mem.write(a, bytemuck::cast_slice(&src)).unwrap();
    let map = |addr| TensorMap {
        data_type: TensorDataType::F32,
        global_address: addr,
        dims: vec![32, (tiles * 32) as u64],
        strides: vec![128],
        box_dims: vec![32, 32],
        element_strides: vec![1, 1],
        interleave: Interleave::None,
        swizzle: Swizzle::B128,
        l2_promotion: L2Promotion::None,
        oob_fill: OobFill::None,
    };
    let params = module.params("tma_scale").unwrap();
    let size = params.iter().map(|p| p.offset + p.size).max().unwrap_or(0);
    let mut buf = vec![0u8; size];
    let mut put = |i: usize, v: &[u8]| {
        let o = params[i].offset;
        buf[o..o + v.len()].copy_from_slice(v);
    };
    for (first, addr) in [(0, a), (5, b)] {
        put(first, &map(addr).encode().unwrap());
        put(first + 1, &((tiles * 32) as u32).to_le_bytes());
        put(first + 2, &32u32.to_le_bytes());
        put(first + 3, &32u64.to_le_bytes());
        put(first + 4, &1u64.to_le_bytes());
    }
    put(10, &(tiles as u32).to_le_bytes());
    // Two CTAs share the five tiles (the kernel strides by the grid).
    let dims = LaunchDims {
        grid: [2, 1, 1],
        block: [128, 1, 1],
        dynamic_shared_bytes: 8200,
    };
    launch(
        &module,
        "tma_scale",
        &dims,
        &buf,
        &mut mem,
        &Checks::default(),
    )
    .unwrap();
    let mut o = vec![0u8; n * 4];
    mem.read(b, &mut o).unwrap();
    let got: &[f32] = bytemuck::cast_slice(&o);
    let want: Vec<f32> = src.iter().map(|x| x * 2.0 + 1.0).collect();
    assert_eq!(got, &want[..]);
}
