//! Every shipped kernel family through the runtime API, on the device named by the
//! environment: `FRUGAL_TEST_DEVICE=emu` (the default: the PTX emulator with every
//! sanitizer check on, as CI runs it) or `cuda` / `cuda:N` (a real GPU; scripts/gpu-check.sh
//! sets it). Buffers come from `Device::alloc` (and, in one test, a planned arena); launches
//! are the kernel families' typed `Launch`es, run by `Device::run`; outputs are poisoned with
//! NaN; results are checked element by element against the host references in
//! `frugal_ptx::testing` (the same checks `ptx/tests/kernels_*.rs` run in the emulator).
//!
//! Shapes and inputs come from a seeded generator (`FRUGAL_TEST_SEED`, default fixed, so a
//! failure reproduces; the seed and shape are in every failure message). On `cuda` each
//! family draws four times as many cases and adds full-size shapes (the paper's widths,
//! the 32k vocabulary, matmuls big enough for the 128x128 tile, a split-K weight gradient),
//! since the device is fast and only the host reference costs time. Tolerances are the same
//! on every device: see `frugal_ptx::testing` for why they hold on hardware whose `.approx`
//! operations are within a few ulp rather than correctly rounded.

use std::sync::OnceLock;

use frugal_ptx::error::PtxError;
use frugal_ptx::flash::AttnShape;
use frugal_ptx::kernels::rmsnorm::DxMode;
use frugal_ptx::kernels::rope::Direction;
use frugal_ptx::kernels::{swiglu, Launch};
use frugal_ptx::matmul::{Epilogue, Gemm, KernelKind, Layout, OutType, TILE_CONFIGS};
use frugal_ptx::testing::{self, bf, matmul::Pick, rmsnorm::Fwd, Gen, Runner};
use frugal_runtime::arena::{plan, BufferRequest, Category};
use frugal_runtime::buffer::DeviceBuffer;
use frugal_runtime::device::{Backend, Device, DeviceSpec};
use frugal_runtime::RuntimeError;

/// The device the tests run on, from `FRUGAL_TEST_DEVICE`.
fn test_spec() -> DeviceSpec {
    let name = std::env::var("FRUGAL_TEST_DEVICE").unwrap_or_else(|_| "emu".into());
    match name.parse::<DeviceSpec>() {
        Ok(s @ (DeviceSpec::Emu | DeviceSpec::Cuda(_) | DeviceSpec::LocalCuda)) => s,
        _ => panic!("FRUGAL_TEST_DEVICE='{name}': use emu (the default) or cuda[:N]"),
    }
}

/// The first seed of every test's generator, from `FRUGAL_TEST_SEED`.
fn base_seed() -> u64 {
    match std::env::var("FRUGAL_TEST_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("FRUGAL_TEST_SEED='{s}' is not a whole number")),
        Err(_) => 20_241_024,
    }
}

/// One CUDA device for the whole binary (a context and the JIT of every module once); an
/// emulated device per test, so that tests run in parallel (the emulator holds its memory
/// lock for a whole launch).
enum DeviceRef {
    Owned(Device),
    Shared(&'static Device),
}

impl std::ops::Deref for DeviceRef {
    type Target = Device;
    fn deref(&self) -> &Device {
        match self {
            DeviceRef::Owned(d) => d,
            DeviceRef::Shared(d) => d,
        }
    }
}

fn device() -> DeviceRef {
    static SHARED: OnceLock<Device> = OnceLock::new();
    let spec = test_spec();
    let open = || {
        Device::open(spec).unwrap_or_else(|e| {
            panic!("FRUGAL_TEST_DEVICE asks for {spec}, which does not open: {e}")
        })
    };
    match spec {
        DeviceSpec::Emu => DeviceRef::Owned(open()),
        _ => DeviceRef::Shared(SHARED.get_or_init(open)),
    }
}

/// The runtime as a test [`Runner`]: one `Device::alloc` per upload, launches by
/// `Device::run`, reads by `DeviceBuffer::read` (ordered after every launch).
struct DeviceRunner {
    dev: DeviceRef,
    buffers: Vec<DeviceBuffer>,
    /// Where the case stands, for failure messages.
    context: String,
}

impl DeviceRunner {
    fn new() -> DeviceRunner {
        DeviceRunner {
            dev: device(),
            buffers: Vec::new(),
            context: String::new(),
        }
    }

    /// True on a GPU, or when `FRUGAL_TEST_SIZES=full` asks the emulator for the GPU's
    /// case counts and full-size shapes (to check the big shapes before a GPU run: about
    /// 4 minutes here for every family, single-threaded, most of it matmul).
    fn full_sizes(&self) -> bool {
        self.dev.backend() == Backend::Cuda
            || std::env::var("FRUGAL_TEST_SIZES").is_ok_and(|s| s == "full")
    }

    /// `emu_cases` on the emulator, four times as many on a GPU.
    fn cases(&self, emu_cases: usize) -> usize {
        if self.full_sizes() {
            4 * emu_cases
        } else {
            emu_cases
        }
    }

    /// Frees the previous case's buffers and names the next case in failure messages.
    fn start(&mut self, context: String) {
        self.buffers.clear();
        self.context = context;
    }
}

impl Runner for DeviceRunner {
    fn upload_bytes(&mut self, bytes: &[u8], label: &str) -> u64 {
        let mut buf = self
            .dev
            .alloc(bytes.len().max(1), label)
            .unwrap_or_else(|e| panic!("{}: alloc '{label}': {e}", self.context));
        buf.write(0, bytes)
            .unwrap_or_else(|e| panic!("{}: upload '{label}': {e}", self.context));
        let addr = buf.ptr();
        self.buffers.push(buf);
        addr
    }

    fn download_bytes(&mut self, addr: u64, out: &mut [u8]) {
        let buf = self
            .buffers
            .iter()
            .find(|b| (b.ptr()..b.ptr() + b.bytes() as u64).contains(&addr))
            .unwrap_or_else(|| panic!("{}: no buffer holds {addr:#x}", self.context));
        buf.read((addr - buf.ptr()) as usize, out)
            .unwrap_or_else(|e| panic!("{}: read '{}': {e}", self.context, buf.label()));
    }

    fn run(&mut self, launch: &Launch) {
        if let Err(e) = self.dev.run(launch) {
            panic!(
                "{}: {} on {}: {e}",
                self.context,
                launch.kernel,
                self.name()
            );
        }
    }

    /// The GPU's SM version; on the emulator `FRUGAL_TEST_ARCH` (default 80), so that
    /// dispatch for another architecture (90: an H100/H200's table rows) can be checked
    /// without one.
    fn arch(&self) -> u32 {
        match &*self.dev {
            Device::Cuda(c) => c.info().sm,
            _ => match std::env::var("FRUGAL_TEST_ARCH") {
                Ok(s) => s.trim().parse().unwrap_or_else(|_| {
                    panic!("FRUGAL_TEST_ARCH='{s}': an SM version such as 80 or 90")
                }),
                Err(_) => 80,
            },
        }
    }

    fn name(&self) -> String {
        self.dev.name()
    }
}

/// Runs `f` with a runner and a generator; prints the device and the base seed first (the
/// harness shows it with a failure, whose message names the case's own seed and shape).
fn with_runner(test: &str, f: impl FnOnce(&mut DeviceRunner, &mut Gen)) {
    let seed = base_seed();
    let mut r = DeviceRunner::new();
    eprintln!(
        "{test}: on {} (FRUGAL_TEST_DEVICE={}), FRUGAL_TEST_SEED={seed}",
        r.name(),
        test_spec()
    );
    // Each test mixes its name into the seed so tests draw different cases.
    let salt = test
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut gen = Gen(seed ^ salt);
    f(&mut r, &mut gen);
}

#[test]
fn util_fill_scale_and_casts() {
    with_runner("util", |r, g| {
        let mut cases = vec![(0, 0), (1, 0), (7, 0), (1003, 0), (1003, 4), (64, 4)];
        for _ in 0..r.cases(4) {
            cases.push((g.range(1, 5000), g.pick(&[0, 4])));
        }
        if r.full_sizes() {
            cases.push(((1 << 22) + 3, 0));
        }
        for (n, offset) in cases {
            let seed = g.next_u64();
            r.start(format!("util n {n} offset {offset} seed {seed}"));
            testing::util::case(r, n, offset, seed);
        }
    });
}

#[test]
fn rmsnorm_forward_backward_and_dg() {
    with_runner("rmsnorm", |r, g| {
        let mut cases = Vec::new();
        for _ in 0..r.cases(8) {
            let rows = g.range(1, 70);
            let c = g.pick(&[104usize, 192, 240, 312, 208, 13, 1, 257]);
            let mode = g.pick(&[DxMode::Overwrite, DxMode::Accumulate]);
            let fwd = g.pick(&[Fwd::Plain, Fwd::Residual]);
            cases.push((rows, c, mode, fwd));
        }
        cases.push((33, 832, DxMode::Overwrite, Fwd::Residual));
        if r.full_sizes() {
            // The paper's widths at a full micro-batch's row count.
            for c in [832, 1536, 1920, 2496] {
                cases.push((257, c, DxMode::Accumulate, Fwd::Residual));
            }
        }
        for (rows, c, mode, fwd) in cases {
            let seed = g.next_u64();
            r.start(format!(
                "rmsnorm rows {rows} C {c} {mode:?} {fwd:?} seed {seed}"
            ));
            testing::rmsnorm::case(r, rows, c, mode, fwd, seed);
        }
    });
}

#[test]
fn swiglu_forward_backward() {
    with_runner("swiglu", |r, g| {
        let mut cases = vec![(1, 4147, 0), (1, 4147, 1)];
        for _ in 0..r.cases(6) {
            let f = g.pick(&[583usize, 518, 648, 842, 1036, 3, 13]);
            cases.push((g.range(1, 4), f, g.pick(&[0, 1])));
        }
        if r.full_sizes() {
            cases.push((512, 6739, 0));
        }
        for (rows, f, offset) in cases {
            let seed = g.next_u64();
            r.start(format!(
                "swiglu rows {rows} F {f} offset {offset} seed {seed}"
            ));
            testing::swiglu::case(r, rows, f, offset, seed);
        }
    });
}

#[test]
fn rope_forward_backward() {
    with_runner("rope", |r, g| {
        let mut cases = vec![(1, 300, 1, 64, Direction::Forward)];
        for _ in 0..r.cases(8) {
            let dir = g.pick(&[Direction::Forward, Direction::Backward]);
            let hs = g.pick(&[64usize, 128, 8]);
            cases.push((
                g.range(1, 2),
                g.range(1, 6),
                g.pick(&[1usize, 3, 5]),
                hs,
                dir,
            ));
        }
        if r.full_sizes() {
            cases.push((2, 1024, 13, 64, Direction::Backward));
        }
        for (b, t, heads, hs, dir) in cases {
            let seed = g.next_u64();
            r.start(format!(
                "rope B {b} T {t} heads {heads} HS {hs} {dir:?} seed {seed}"
            ));
            testing::rope::case(r, b, t, heads, hs, dir, seed);
        }
    });
}

#[test]
fn embedding_forward_backward() {
    with_runner("embedding", |r, g| {
        let mut cases = Vec::new();
        for _ in 0..r.cases(8) {
            let c = g.pick(&[104usize, 192, 240, 312, 13, 259]);
            cases.push((g.range(1, 40), c, g.range(1, 50)));
        }
        if r.full_sizes() {
            cases.push((2048, 832, 32000));
        }
        for (n, c, v) in cases {
            let seed = g.next_u64();
            r.start(format!("embedding n {n} C {c} V {v} seed {seed}"));
            testing::embedding::case(r, n, c, v, seed);
        }
    });
}

#[test]
fn cross_entropy_and_mean() {
    with_runner("cross_entropy", |r, g| {
        let mut cases = vec![(3, 32000, 8.0, 1.0)];
        for _ in 0..r.cases(6) {
            let v = g.pick(&[1usize, 2, 7, 8, 100, 257, 264, 1000, 4001]);
            cases.push((
                g.range(1, 6),
                v,
                g.pick(&[1.0f32, 8.0, 30.0]),
                g.pick(&[1.0f32, 0.25]),
            ));
        }
        if r.full_sizes() {
            cases.push((64, 32000, 30.0, 0.25));
        }
        for (rows, v, amp, scale) in cases {
            let seed = g.next_u64();
            r.start(format!(
                "cross_entropy rows {rows} V {v} amp {amp} scale {scale} seed {seed}"
            ));
            testing::cross_entropy::case(r, rows, v, amp, scale, seed);
        }
    });
}

#[test]
fn grad_norm_and_adamw() {
    with_runner("adamw", |r, g| {
        let mut norms = vec![(2 * frugal_ptx::kernels::adamw::NORM_CHUNK + 4147, 1.0)];
        let mut updates = Vec::new();
        for _ in 0..r.cases(4) {
            norms.push((g.range(1, 3000), g.pick(&[0.0f32, 0.5, 1.0, 1e6])));
            updates.push((
                g.range(1, 2000),
                g.range(1, 5000) as u64,
                g.pick(&[1.0f32, 0.37]),
            ));
        }
        if r.full_sizes() {
            norms.push((130_569_920 / 8, 1.0));
            updates.push((1 << 22, 7, 0.37));
        }
        for (n, max_norm) in norms {
            let seed = g.next_u64();
            r.start(format!("grad norm n {n} max_norm {max_norm} seed {seed}"));
            testing::adamw::norm_case(r, n, max_norm, seed);
        }
        for (n, step, scale) in updates {
            let seed = g.next_u64();
            r.start(format!("adamw n {n} step {step} scale {scale} seed {seed}"));
            testing::adamw::adamw_case(r, n, step, scale, seed);
        }
    });
}

#[test]
fn attention_softmax_forward_backward() {
    with_runner("softmax", |r, g| {
        let mut cases = vec![(1, 300, 0.125f32)];
        for _ in 0..r.cases(6) {
            let t = g.pick(&[1usize, 2, 7, 8, 33, 40, 100]);
            let hs = g.pick(&[64.0f32, 128.0]);
            cases.push((g.range(1, 3), t, 1.0 / hs.sqrt()));
        }
        if r.full_sizes() {
            cases.push((4, 1024, 0.125));
        }
        for (heads, t, scale) in cases {
            let seed = g.next_u64();
            r.start(format!(
                "softmax heads {heads} T {t} scale {scale} seed {seed}"
            ));
            testing::softmax::case(r, heads, t, scale, seed);
        }
    });
}

/// A random product: any layout, output type and epilogue, ragged sizes, sometimes padded
/// leading dimensions or a batch.
fn random_gemm(g: &mut Gen, layout: Layout, out: OutType, epilogue: Epilogue, max: usize) -> Gemm {
    let (m, n, k) = (g.range(1, max), g.range(1, max), g.range(1, max));
    let alpha = g.pick(&[1.0f32, 0.5, -1.25]);
    let dense = Gemm::dense(layout, out, m, n, k).with_epilogue(epilogue, alpha);
    // Padding by a multiple of 8 keeps the tensor-core kernels eligible; 3 forces SIMT.
    testing::matmul::gemm(dense, g.pick(&[0, 0, 8, 3]), g.pick(&[1, 1, 3]))
}

#[test]
fn matmul_every_layout_output_and_epilogue_via_plan() {
    with_runner("matmul", |r, g| {
        let mut kernels = std::collections::BTreeSet::new();
        for layout in Layout::ALL {
            for out in [OutType::F32, OutType::Bf16] {
                for epilogue in [Epilogue::Overwrite, Epilogue::Accumulate] {
                    for _ in 0..r.cases(2) {
                        let gm = random_gemm(g, layout, out, epilogue, 80);
                        let seed = g.next_u64();
                        r.start(format!("matmul plan {gm:?} seed {seed}"));
                        kernels.insert(testing::matmul::case(r, &gm, Pick::Plan, seed));
                    }
                    // K a multiple of 8 and tight: dispatch picks a tensor-core kernel.
                    let gm = Gemm::dense(layout, out, 40, 24, 48).with_epilogue(epilogue, 1.0);
                    let seed = g.next_u64();
                    r.start(format!("matmul plan {gm:?} seed {seed}"));
                    kernels.insert(testing::matmul::case(r, &gm, Pick::Plan, seed));
                }
            }
        }
        if r.full_sizes() {
            // paper-100m's widths (C 832, F 2332, V 32000) at row counts that reach the
            // 128x128 and 128x64 rows of the dispatch table; the f64 reference on the host
            // bounds the sizes (about 3 G multiply-adds in all).
            for (layout, m, n, k) in [
                (Layout::Nt, 1024, 1024, 832),
                (Layout::Nn, 512, 832, 2332),
                (Layout::Tn, 832, 832, 512),
                (Layout::Nt, 64, 32000, 832),
            ] {
                let out = if layout == Layout::Tn {
                    OutType::F32
                } else {
                    OutType::Bf16
                };
                let epilogue = if layout == Layout::Tn {
                    Epilogue::Accumulate
                } else {
                    Epilogue::Overwrite
                };
                let gm = Gemm::dense(layout, out, m, n, k).with_epilogue(epilogue, 1.0);
                let seed = g.next_u64();
                r.start(format!("matmul plan {gm:?} seed {seed}"));
                kernels.insert(testing::matmul::case(r, &gm, Pick::Plan, seed));
            }
        }
        eprintln!("kernels dispatched: {kernels:?}");
        // Which kernel each shape gets is the dispatch table's business (and changes with
        // it); the aligned 40x24x48 products must reach a tensor-core kernel on sm_80+.
        assert!(
            kernels.iter().any(|k| k.contains("_tc_")),
            "no tensor-core kernel was dispatched: {kernels:?}"
        );
    });
}

#[test]
fn matmul_every_kernel_kind() {
    with_runner("matmul_kinds", |r, g| {
        let mut kinds = vec![KernelKind::Simt];
        kinds.extend(TILE_CONFIGS.iter().map(|&cfg| KernelKind::MmaSync(cfg)));
        for kind in kinds {
            for layout in Layout::ALL {
                // Ragged M and N past one tile; K a multiple of 8 (every kernel's operands
                // stay 16-byte aligned).
                let (m, n, k) = (g.range(1, 140), g.range(1, 140), 8 * g.range(1, 9));
                let out = g.pick(&[OutType::F32, OutType::Bf16]);
                let epilogue = g.pick(&[Epilogue::Overwrite, Epilogue::Accumulate]);
                let mut gm = Gemm::dense(layout, out, m, n, k).with_epilogue(epilogue, 0.75);
                // Leading dimensions rounded up to 8 elements (16 bytes): operands every
                // tensor-core kernel accepts, whatever M and N are.
                gm.lda = gm.lda.next_multiple_of(8);
                gm.ldb = gm.ldb.next_multiple_of(8);
                let seed = g.next_u64();
                r.start(format!("matmul {kind:?} {gm:?} seed {seed}"));
                testing::matmul::case(r, &gm, Pick::Kind(kind), seed);
            }
        }
    });
}

/// Split-K: every kernel kind with K cut into 2..=4 slices (the partial products into an
/// f32 workspace, then the fixed-order reduce and the epilogue), and dispatch with a
/// workspace offered (`plan_split`) on long-K products.
#[test]
fn matmul_split_k() {
    with_runner("matmul_split", |r, g| {
        let mut kinds = vec![KernelKind::Simt];
        kinds.extend(TILE_CONFIGS.iter().map(|&cfg| KernelKind::MmaSync(cfg)));
        for kind in kinds {
            let layout = g.pick(&Layout::ALL);
            let (m, n, k) = (g.range(1, 70), g.range(1, 70), g.range(65, 200));
            let out = g.pick(&[OutType::F32, OutType::Bf16]);
            let epilogue = g.pick(&[Epilogue::Overwrite, Epilogue::Accumulate]);
            let mut gm = Gemm::dense(layout, out, m, n, k).with_epilogue(epilogue, 1.5);
            gm.lda = gm.lda.next_multiple_of(8);
            gm.ldb = gm.ldb.next_multiple_of(8);
            let split = g.range(2, 4) as u32;
            let seed = g.next_u64();
            r.start(format!("matmul {kind:?} split {split} {gm:?} seed {seed}"));
            testing::matmul::case(r, &gm, Pick::Split(kind, split), seed);
        }
        let mut shapes = vec![(Layout::Tn, 64, 64, 1024), (Layout::Nt, 32, 48, 512)];
        if r.full_sizes() {
            // A weight gradient of paper-100m's shape, K = B*T tokens (kept to 4096 so the
            // host reference stays near 3 G multiply-adds).
            shapes.push((Layout::Tn, 832, 832, 4096));
        }
        for (layout, m, n, k) in shapes {
            let gm =
                Gemm::dense(layout, OutType::F32, m, n, k).with_epilogue(Epilogue::Accumulate, 1.0);
            let seed = g.next_u64();
            r.start(format!("matmul plan_split {gm:?} seed {seed}"));
            let kernels = testing::matmul::case(r, &gm, Pick::PlanSplit, seed);
            eprintln!("plan_split {layout:?} {m}x{n}x{k}: {kernels}");
        }
    });
}

#[test]
fn flash_attention_forward_then_backward() {
    with_runner("flash", |r, g| {
        let shape = |b, t, nh, nkv, hs| AttnShape { b, t, nh, nkv, hs };
        let mut shapes = vec![
            shape(1, 1, 1, 1, 64),
            shape(1, 77, 4, 2, 64),
            shape(1, 70, 2, 1, 128),
        ];
        for i in 0..r.cases(4) {
            let nkv = g.range(1, 2);
            let hs = if i % 2 == 0 { 64 } else { 128 };
            shapes.push(shape(
                g.range(1, 2),
                g.range(1, 200),
                nkv * g.range(1, 3),
                nkv,
                hs,
            ));
        }
        if r.full_sizes() {
            // paper-100m's 13 heads of 64 at T = 1024; GQA at HS 128.
            shapes.push(shape(1, 1024, 13, 13, 64));
            shapes.push(shape(2, 512, 8, 2, 128));
        }
        for s in shapes {
            let seed = g.next_u64();
            r.start(format!("flash {s:?} seed {seed}"));
            testing::flash::chain_case(r, s, seed);
        }
    });
}

/// Kernels on views of one planned arena whose buffers share bytes over time: SwiGLU's
/// forward output is dead before the backward's outputs are written, so the planner may
/// place them on the same bytes; results must be as with separate buffers.
#[test]
fn swiglu_on_arena_views_with_shared_bytes() {
    let dev = device();
    let n = 3 * 1036 + 5;
    let bytes = 2 * n as u64;
    let act = Category::Activations;
    // Schedule: 0 upload, 1 forward, 2 read out, 3 backward, 4 read gradients.
    let p = plan(&[
        BufferRequest::new("gate", act, bytes, 0, 4),
        BufferRequest::new("up", act, bytes, 0, 4),
        BufferRequest::new("out", act, bytes, 1, 2),
        BufferRequest::new("dout", act, bytes, 3, 4),
        BufferRequest::new("dgate", act, bytes, 3, 4),
        BufferRequest::new("dup", act, bytes, 3, 4),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        p.peak_bytes < p.requested_bytes(),
        "the plan should share bytes between out and the backward's buffers"
    );
    let mut arena = dev.alloc_arena(p).unwrap_or_else(|e| panic!("{e}"));
    let mut gen = Gen(base_seed());
    let (gate, up, dout) = (gen.bf16s(n, 6.0), gen.bf16s(n, 2.0), gen.bf16s(n, 2.0));
    let ptr = |arena: &frugal_runtime::buffer::DeviceArena, name: &str| {
        arena
            .view::<u16>(name)
            .unwrap_or_else(|e| panic!("{e}"))
            .ptr
    };
    arena.write("gate", &gate).unwrap_or_else(|e| panic!("{e}"));
    arena.write("up", &up).unwrap_or_else(|e| panic!("{e}"));
    arena
        .write("out", &vec![testing::POISON_BF16; n])
        .unwrap_or_else(|e| panic!("{e}"));
    let run = |l: Result<Launch, PtxError>| {
        dev.run(&l.unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let (pg, pu) = (ptr(&arena, "gate"), ptr(&arena, "up"));
    run(swiglu::forward(pg, pu, ptr(&arena, "out"), n));
    let mut out = vec![0u16; n];
    arena
        .read("out", &mut out)
        .unwrap_or_else(|e| panic!("{e}"));
    arena.write("dout", &dout).unwrap_or_else(|e| panic!("{e}"));
    for name in ["dgate", "dup"] {
        arena
            .write(name, &vec![testing::POISON_BF16; n])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    run(swiglu::backward(
        ptr(&arena, "dout"),
        pg,
        pu,
        ptr(&arena, "dgate"),
        ptr(&arena, "dup"),
        n,
    ));
    let mut dup = vec![0u16; n];
    arena
        .read("dup", &mut dup)
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..n {
        let (g, u, d) = (bf(gate[i]), bf(up[i]), bf(dout[i]));
        let silu = g / (1.0 + (-g).exp());
        // As testing::swiglu: f32 with approximate ex2/rcp, one bf16 rounding: 2^-8 relative.
        for (what, got, want) in [("out", out[i], silu * u), ("dup", dup[i], d * silu)] {
            let tol = want.abs() * 2f64.powi(-8) + 1e-30;
            testing::assert_close(format_args!("{what}[{i}]"), bf(got), want, tol);
        }
    }
}

/// A sanitizer finding of the emulator comes back from `Device::run` as an ordinary
/// `RuntimeError::Emulator` naming the kernel and the nearest buffer, and the device stays
/// usable. Emulator only: on a GPU the same launch would be an illegal address that ends the
/// context.
#[test]
fn sanitizer_finding_through_run_is_a_normal_error() {
    let dev = Device::open(DeviceSpec::Emu).unwrap_or_else(|e| panic!("{e}"));
    let n = 100;
    let gate = dev.alloc(2 * n, "gate").unwrap_or_else(|e| panic!("{e}"));
    let up = dev.alloc(2 * n, "up").unwrap_or_else(|e| panic!("{e}"));
    let out = dev
        .alloc(2 * n, "small out")
        .unwrap_or_else(|e| panic!("{e}"));
    // The launcher cannot know the buffers' sizes: claim 4096 elements in 100.
    let launch =
        swiglu::forward(gate.ptr(), up.ptr(), out.ptr(), 4096).unwrap_or_else(|e| panic!("{e}"));
    let e = dev
        .run(&launch)
        .expect_err("a launch past its buffers must fail");
    let RuntimeError::Emulator { kernel, source } = &e else {
        panic!("expected an emulator report, got {e}");
    };
    assert_eq!(kernel, "swiglu_fwd");
    let PtxError::OutOfBounds { nearest, .. } = source.as_ref() else {
        panic!("expected an out-of-bounds report, got {source}");
    };
    let label = nearest.as_ref().map(|b| b.label.as_str());
    assert!(
        matches!(label, Some("gate" | "up" | "small out")),
        "nearest buffer {label:?}"
    );
    assert!(e.to_string().contains("out of bounds"), "{e}");
    // The same device, a correct launch: it works, and nothing was left behind.
    dev.run(&swiglu::forward(gate.ptr(), up.ptr(), out.ptr(), n).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("after the finding: {e}"));
    dev.synchronize().unwrap_or_else(|e| panic!("{e}"));
}
