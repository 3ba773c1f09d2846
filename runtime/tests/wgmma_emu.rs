//! The sm_90a wgmma matmul through the runtime's launch path on the emulated GPU, as a GPU
//! would run it: tensor maps encoded for the device (`encode_tensor_map`), the arguments
//! (`Arg::TensorMap` included) packed by `Device::launch` against the kernel's declaration
//! in the shipped catalogue. Small integers make every product and sum exact, so C is
//! compared bit for bit.

use frugal_ptx::error::PtxError;
use frugal_ptx::matmul::wgmma::{self, WGMMA_128X128};
use frugal_ptx::matmul::{Gemm, Layout, OutType};
use frugal_ptx::tensor_map::TensorMap;
use frugal_runtime::device::{Device, DeviceSpec};
use frugal_runtime::tensor_map::encode_tensor_map;

#[test]
fn wgmma_matmul_runs_through_the_runtime_on_the_emulator() {
    let dev = Device::open(DeviceSpec::Emu).unwrap_or_else(|e| panic!("{e}"));
    // M, N ragged against the 128-tile; K one full and one partial 64-wide k tile.
    let (m, n, k) = (136usize, 144usize, 72usize);
    let g = Gemm::dense(Layout::Nn, OutType::F32, m, n, k);
    // Values in -2..=2: bf16 exact, every product and partial sum an exact f32 integer.
    let small = |i: usize, salt: usize| ((i * 7 + salt) % 5) as f32 - 2.0;
    let a: Vec<u16> = (0..m * k)
        .map(|i| half::bf16::from_f32(small(i, 1)).to_bits())
        .collect();
    let b: Vec<u16> = (0..k * n)
        .map(|i| half::bf16::from_f32(small(i, 3)).to_bits())
        .collect();
    let mut pa = dev
        .alloc(2 * a.len(), "a")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut pb = dev
        .alloc(2 * b.len(), "b")
        .unwrap_or_else(|e| panic!("{e}"));
    let pc = dev.alloc(4 * m * n, "c").unwrap_or_else(|e| panic!("{e}"));
    pa.write(0, &a).unwrap_or_else(|e| panic!("{e}"));
    pb.write(0, &b).unwrap_or_else(|e| panic!("{e}"));
    let mut encode = |map: &TensorMap| {
        encode_tensor_map(&dev, map).map_err(|e| PtxError::BadLaunch {
            kernel: "matmul_wgmma".into(),
            reason: e.to_string(),
        })
    };
    let l = wgmma::launch_args(
        &WGMMA_128X128,
        &g,
        pa.ptr(),
        pb.ptr(),
        pc.ptr(),
        2,
        &mut encode,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    dev.launch(l.kernel, &l.dims, &l.args)
        .unwrap_or_else(|e| panic!("{e}"));
    dev.synchronize().unwrap_or_else(|e| panic!("{e}"));
    let c: Vec<f32> = pc.to_vec().unwrap_or_else(|e| panic!("{e}"));
    for i in 0..m {
        for j in 0..n {
            let want: f32 = (0..k)
                .map(|kk| small(i * k + kk, 1) * small(kk * n + j, 3))
                .sum();
            assert_eq!(c[i * n + j], want, "C[{i}][{j}]");
        }
    }
}
