//! The recorder the step is built with: declares buffers, records each operation with
//! what it computes ([`Work`]) and the buffers its launches touch, and the small
//! operations (RMSNorm, SwiGLU, RoPE) every part of the step repeats.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use frugal_ptx::catalogue;
use frugal_ptx::emu::{Module, ParamInfo};
use frugal_ptx::error::PtxError;
use frugal_ptx::kernels::rmsnorm::{RmsNormBwd, RmsNormFwd, RmsNormResidualFwd};
use frugal_ptx::kernels::rope::{RopeBufs, RopeShape};
use frugal_ptx::kernels::{rmsnorm, rope, swiglu, Launch};
use frugal_ptx::matmul::wgmma::{self, dispatch::select_tma, EncodeTensorMap};
use frugal_ptx::matmul::{self, Epilogue, Gemm, KernelKind, Layout, OutType, TileConfig};
use frugal_ptx::tensor_map::TensorMap;
use frugal_runtime::arena::Category;

use super::{Decl, Op, OpKind, Work};
use crate::device::place::{At, Resolve};
use crate::error::ModelError;

pub(super) const BF16: u64 = 2;
pub(super) const F32: u64 = 4;
pub(super) const U32: u64 = 4;

/// A fake, generously aligned address for `at` while recording uses (the real arena's
/// offsets are 256-byte aligned, so every alignment check sees the same low bits).
fn fake_address(at: At) -> u64 {
    ((at.buf as u64 + 1) << 40) + at.byte
}

/// The tensor-map encoder used while recording: the emulator's encoding, which checks a map
/// by the same rules as the driver's (`TensorMap::validate`), so a map the device would
/// refuse is refused when the step is built.
fn check_map(map: &TensorMap) -> Result<[u8; frugal_ptx::tensor_map::TENSOR_MAP_BYTES], PtxError> {
    map.encode().map_err(|reason| PtxError::BadLaunch {
        kernel: "tensor map".into(),
        reason,
    })
}

/// SMs the persistent wgmma grids are sized for when the caller does not say (an H100
/// SXM's 132).
pub(crate) const DEFAULT_SMS: u32 = crate::device::StepTarget::DEFAULT_SMS;

pub(super) struct Builder {
    pub decls: Vec<Decl>,
    pub ops: Vec<Op>,
    phase: String,
    /// Matmul dispatch architecture used to validate launches while recording: from 90 up
    /// the sm_90a kernels (wgmma matmul, wgmma flash forward) where they apply.
    pub arch: u32,
    /// SMs of the target GPU: the persistent wgmma matmul's grid.
    pub sms: u32,
    /// Parameter layouts of the TMA kernels used so far, by entry name (parsed once from
    /// the catalogue: their launches are packed here, at the kernel's declared offsets).
    tma_params: HashMap<&'static str, Arc<[ParamInfo]>>,
    /// Matmuls whose launch was already built and checked while recording, by shape and
    /// the operands' low address bits (all a launch's checks can see of an address, the
    /// arena's offsets being 256-byte aligned): every layer repeats the same products, and
    /// building one launch looks its kernel up in the PTX catalogue.
    checked_matmuls: HashSet<String>,
}

impl Builder {
    pub fn new(arch: u32, sms: u32) -> Builder {
        Builder {
            decls: Vec::new(),
            ops: Vec::new(),
            phase: "forward".into(),
            arch,
            sms,
            tma_params: HashMap::new(),
            checked_matmuls: HashSet::new(),
        }
    }

    /// Whether the sm_90a (wgmma, TMA) kernels may be used: on compute capability 9.0
    /// only, since architecture-specific (`a`) PTX does not run on later GPUs; those take
    /// the sm_80 kernels, which every GPU from sm_80 runs.
    pub fn hopper(&self) -> bool {
        frugal_ptx::catalogue::Target::Sm90a.runs_on(self.arch)
    }

    /// The declared parameters of catalogue kernel `kernel` (module and entry of one name,
    /// as every sm_90a module is).
    pub fn tma_params(&mut self, kernel: &'static str) -> Result<Arc<[ParamInfo]>, ModelError> {
        if let Some(p) = self.tma_params.get(kernel) {
            return Ok(p.clone());
        }
        let err = |source: PtxError| ModelError::Kernel {
            what: format!("the parameters of {kernel}"),
            source: Box::new(source),
        };
        let module = catalogue::module(kernel).ok_or_else(|| {
            err(PtxError::BadLaunch {
                kernel: kernel.to_string(),
                reason: "not in the PTX catalogue".into(),
            })
        })?;
        let params: Arc<[ParamInfo]> = Module::parse(module.text)
            .and_then(|m| m.params(kernel))
            .map_err(err)?
            .into();
        self.tma_params.insert(kernel, params.clone());
        Ok(params)
    }

    pub fn declare(
        &mut self,
        name: String,
        category: Category,
        bytes: u64,
        persistent: bool,
    ) -> usize {
        self.decls.push(Decl {
            name,
            category,
            // Zero-sized buffers are not useful to the planner; one element keeps names valid.
            bytes: bytes.max(4),
            persistent,
        });
        self.decls.len() - 1
    }

    pub fn state(&mut self, name: &str, category: Category, bytes: u64) -> usize {
        self.declare(name.to_string(), category, bytes, true)
    }

    pub fn act(&mut self, name: String, bytes: u64) -> usize {
        self.declare(name, Category::Activations, bytes, false)
    }

    pub fn ws(&mut self, name: String, bytes: u64) -> usize {
        self.declare(name, Category::Workspace, bytes, false)
    }

    pub fn phase(&mut self, name: impl Into<String>) {
        self.phase = name.into();
    }

    fn push(&mut self, label: String, work: Work, kind: OpKind, mut uses: Vec<usize>) {
        uses.sort_unstable();
        uses.dedup();
        self.ops.push(Op {
            phase: self.phase.clone(),
            label,
            work,
            kind,
            uses,
        });
    }

    /// Records an operation of fixed launches; the launches are built once here with fake
    /// addresses, which both checks shapes early and records the buffers used.
    pub fn kernels(
        &mut self,
        label: impl Into<String>,
        work: Work,
        emit: impl Fn(Resolve) -> Result<Vec<Launch>, PtxError> + 'static,
    ) -> Result<(), ModelError> {
        self.tma_kernels(label, work, move |r, _| emit(r))
    }

    /// [`Builder::kernels`] for launches with tensor maps (the sm_90a kernels): `emit`
    /// encodes them through the encoder it is given (while recording, the emulator's
    /// encoding, which checks each map as the driver would).
    pub fn tma_kernels(
        &mut self,
        label: impl Into<String>,
        work: Work,
        emit: impl Fn(Resolve, &mut EncodeTensorMap) -> Result<Vec<Launch>, PtxError> + 'static,
    ) -> Result<(), ModelError> {
        let label = label.into();
        let used = RefCell::new(Vec::new());
        let record = |at: At| {
            used.borrow_mut().push(at.buf);
            fake_address(at)
        };
        emit(&record, &mut check_map).map_err(|source| ModelError::Kernel {
            what: label.clone(),
            source: Box::new(source),
        })?;
        let kind = OpKind::Kernels {
            emit: Box::new(emit),
        };
        self.push(label, work, kind, used.into_inner());
        Ok(())
    }

    /// An operation the executor runs itself (transfers, per-call arguments).
    pub fn host(&mut self, label: &str, work: Work, kind: OpKind, uses: Vec<usize>) {
        self.push(label.to_string(), work, kind, uses);
    }

    /// `c = a·bᵀ`-style products: on sm_90 the wgmma + TMA kernel where
    /// [`select_tma`] picks it ([`Builder::wgmma_matmul`]), else through the `mma.sync`
    /// dispatcher ([`matmul::choose`]): split-K where the dispatch asks for it (a product
    /// whose tiles fill under half the GPU, the weight gradients of small models), with its
    /// f32 workspace a buffer of this op alone (so the planner reuses its bytes), else one
    /// launch.
    pub fn matmul(
        &mut self,
        label: impl Into<String>,
        gemm: Gemm,
        a: At,
        b: At,
        c: At,
    ) -> Result<(), ModelError> {
        let label = label.into();
        let arch = self.arch;
        let alignment = gemm.alignment(fake_address(a), fake_address(b));
        if let KernelKind::Wgmma(cfg) =
            select_tma(arch, gemm.layout, gemm.m, gemm.n, gemm.k, alignment).kernel
        {
            return self.wgmma_matmul(label, gemm, cfg, [a, b, c]);
        }
        let choice = matmul::choose(arch, &gemm, alignment);
        let workspace = matmul::workspace_bytes(&choice, &gemm) as u64;
        if workspace > 0 {
            let ws = At::start(self.ws(format!("{label} split-K partials"), workspace));
            let emit =
                move |r: Resolve| matmul::launch_split(&choice, &gemm, r(a), r(b), r(c), r(ws));
            return self.kernels(label, Work::Matmul(gemm), emit);
        }
        let emit = move |r: Resolve| Ok(vec![matmul::launch(&choice, &gemm, r(a), r(b), r(c))?]);
        let low = |at: At| at.byte % 256;
        let key = format!("{gemm:?} {} {} {}", low(a), low(b), low(c));
        if !self.checked_matmuls.contains(&key) {
            self.kernels(label, Work::Matmul(gemm), emit)?;
            self.checked_matmuls.insert(key);
            return Ok(());
        }
        // The launch of a shape already checked: its uses are its three operands (those
        // `emit` resolves), so recording them needs no second catalogue lookup.
        let kind = OpKind::Kernels {
            emit: Box::new(move |r, _| emit(r)),
        };
        let uses = vec![a.buf, b.buf, c.buf];
        self.push(label, Work::Matmul(gemm), kind, uses);
        Ok(())
    }

    /// One launch of the sm_90a wgmma matmul `cfg`: its tensor maps encoded when the
    /// launch is built (once, the arena's addresses being fixed), packed at the kernel's
    /// declared parameter offsets, a persistent grid over [`Builder::sms`] SMs.
    fn wgmma_matmul(
        &mut self,
        label: String,
        gemm: Gemm,
        cfg: TileConfig,
        [a, b, c]: [At; 3],
    ) -> Result<(), ModelError> {
        let kernel =
            wgmma::static_name(&cfg, gemm.layout, gemm.out).ok_or_else(|| ModelError::Kernel {
                what: label.clone(),
                source: Box::new(PtxError::BadLaunch {
                    kernel: wgmma::entry_name(&cfg, gemm.layout, gemm.out),
                    reason: "the TMA dispatch picked a tile config that is not shipped".into(),
                }),
            })?;
        let params = self.tma_params(kernel)?;
        let sms = self.sms;
        let emit = move |r: Resolve, encode: &mut EncodeTensorMap| {
            let l = wgmma::launch(&cfg, &gemm, r(a), r(b), r(c), sms, &params, encode)?;
            Ok(vec![l])
        };
        self.tma_kernels(label, Work::Matmul(gemm), emit)
    }
}

/// Y (m, n) = X (m, k) · Wᵀ, W (n, k): the forward of a linear layer, bf16 out.
pub(super) fn linear_fwd(m: usize, n: usize, k: usize) -> Gemm {
    Gemm::dense(Layout::Nt, OutType::Bf16, m, n, k)
}

/// dX (m, n) = dY (m, k) · W, W (k, n): the input gradient, bf16 out, overwrite or accumulate.
pub(super) fn linear_dx(m: usize, n: usize, k: usize, epilogue: Epilogue) -> Gemm {
    Gemm::dense(Layout::Nn, OutType::Bf16, m, n, k).with_epilogue(epilogue, 1.0)
}

/// dW (out, in) += dYᵀ · X over `tokens` rows: f32, accumulated into the gradients.
pub(super) fn linear_dw(out: usize, inp: usize, tokens: usize) -> Gemm {
    Gemm::dense(Layout::Tn, OutType::F32, out, inp, tokens).with_epilogue(Epilogue::Accumulate, 1.0)
}

/// The token shapes every layer's row-wise kernels share: N = B·T rows of C channels.
#[derive(Clone, Copy)]
pub(super) struct Rows {
    pub n: usize,
    pub c: usize,
    pub eps: f32,
}

/// The buffers of one RMSNorm forward: y (N, C) and rstd (N) from x, or with
/// `residual: Some((res, sum))` from sum = x + res (written to `sum`, the fused residual add).
#[derive(Clone, Copy)]
pub(super) struct NormFwd {
    pub x: usize,
    pub residual: Option<(usize, usize)>,
    pub g: At,
    pub y: usize,
    pub rstd: usize,
}

/// One RMSNorm forward launch (plain or with the fused residual add, per `nf.residual`).
pub(super) fn norm_forward(
    bld: &mut Builder,
    label: impl Into<String>,
    nf: NormFwd,
    rows: Rows,
) -> Result<(), ModelError> {
    let Rows { n, c, eps } = rows;
    let work = Work::RmsNorm {
        rows: n,
        c,
        eps,
        residual: nf.residual.is_some(),
    };
    bld.kernels(label, work, move |r| {
        let (x, g, y, rstd) = (
            r(At::start(nf.x)),
            r(nf.g),
            r(At::start(nf.y)),
            r(At::start(nf.rstd)),
        );
        Ok(vec![match nf.residual {
            None => rmsnorm::forward(RmsNormFwd { x, g, y, rstd }, n, c, eps)?,
            Some((res, sum)) => {
                let bufs = RmsNormResidualFwd {
                    x,
                    res: r(At::start(res)),
                    h: r(At::start(sum)),
                    g,
                    y,
                    rstd,
                };
                rmsnorm::forward_residual(bufs, n, c, eps)?
            }
        }])
    })
}

/// The buffers of one RMSNorm backward.
pub(super) struct NormBwd {
    pub dy: usize,
    pub x: usize,
    pub g: At,
    pub rstd: usize,
    pub dx: usize,
    pub dg: At,
    pub mode: rmsnorm::DxMode,
}

/// dx (per mode) and dg += through the two deterministic launches, with the dg workspace
/// as a buffer of its own (it lives for this op only).
pub(super) fn norm_backward(
    bld: &mut Builder,
    label: impl Into<String>,
    nb: NormBwd,
    rows: Rows,
) -> Result<(), ModelError> {
    let Rows { n, c, .. } = rows;
    let label = label.into();
    let part = bld.ws(
        format!("{label}.dg_parts"),
        rmsnorm::workspace_elems(n, c) as u64 * F32,
    );
    let work = Work::RmsNormBackward { rows: n, c };
    bld.kernels(label, work, move |r| {
        let part = r(At::start(part));
        Ok(vec![
            rmsnorm::backward(
                RmsNormBwd {
                    dy: r(At::start(nb.dy)),
                    x: r(At::start(nb.x)),
                    g: r(nb.g),
                    rstd: r(At::start(nb.rstd)),
                    dx: r(At::start(nb.dx)),
                    dg_part: part,
                },
                n,
                c,
                nb.mode,
            )?,
            rmsnorm::dg_reduce(part, r(nb.dg), n, c)?,
        ])
    })
}

/// act = SwiGLU(gate, up) over `len` elements, from buffers `[gate, up, act]`.
pub(super) fn swiglu_forward(
    bld: &mut Builder,
    label: impl Into<String>,
    [gate, up, act]: [usize; 3],
    len: usize,
) -> Result<(), ModelError> {
    bld.kernels(label, Work::SwiGlu { len }, move |r| {
        Ok(vec![swiglu::forward(
            r(At::start(gate)),
            r(At::start(up)),
            r(At::start(act)),
            len,
        )?])
    })
}

/// The RoPE tables (T, HS/2) and the token shapes every rotation uses.
#[derive(Clone, Copy)]
pub(super) struct RopeAt {
    pub cos: usize,
    pub sin: usize,
    pub n: usize,
    pub t: usize,
    pub hs: usize,
    pub theta: f64,
}

/// Rotates `x` (N, heads*HS) in place, forward or (the transpose) backward.
pub(super) fn rope_op(
    bld: &mut Builder,
    label: impl Into<String>,
    x: usize,
    heads: usize,
    tables: RopeAt,
    direction: rope::Direction,
) -> Result<(), ModelError> {
    let work = Work::Rope {
        rows: tables.n,
        t: tables.t,
        heads,
        hs: tables.hs,
        theta: tables.theta,
        direction,
    };
    bld.kernels(label, work, move |r| {
        let bufs = RopeBufs {
            x: r(At::start(x)),
            cos: r(At::start(tables.cos)),
            sin: r(At::start(tables.sin)),
        };
        let shape = RopeShape {
            rows: tables.n,
            t: tables.t,
            heads,
            hs: tables.hs,
        };
        Ok(vec![rope::rope(bufs, shape, direction)?])
    })
}
