//! The harness of the `emu_wgmma*` tests: operands placed in shared memory in each canonical
//! layout (written from the PTX ISA's "Shared Memory Matrix Layout" in storage terms: rows of
//! W bytes, boxes, core matrices, swizzled as a TMA copy would), the hand-written sm_90a
//! kernel that runs `wgmma.mma_async` over them (with planted faults), and the host product
//! and the ISA's accumulator fragment formula to read D back. Nothing here reuses the
//! emulator's own layout code.
#![allow(dead_code)]
use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, MmaNumerics, Module};
use frugal_ptx::error::PtxError;
use frugal_ptx::testing::Gen;

/// A swizzle mode by its width in bytes (0: none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Swz {
    None,
    B32,
    B64,
    B128,
}

impl Swz {
    pub const ALL: [Swz; 4] = [Swz::None, Swz::B32, Swz::B64, Swz::B128];
    pub fn width(self) -> usize {
        match self {
            Swz::None => 0,
            Swz::B32 => 32,
            Swz::B64 => 64,
            Swz::B128 => 128,
        }
    }
    /// The descriptor's layout field (bits 62-63): 1 is 128B, 2 64B, 3 32B.
    pub fn layout_code(self) -> u64 {
        match self {
            Swz::None => 0,
            Swz::B128 => 1,
            Swz::B64 => 2,
            Swz::B32 => 3,
        }
    }
    /// Where a TMA copy with this mode puts the byte addressed `addr` (within a 1024-aligned
    /// region): the 16-byte chunk index within the W-byte span XORed with the 128-byte line
    /// index modulo W/16.
    pub fn apply(self, addr: usize) -> usize {
        let chunks = self.width() / 16;
        if chunks == 0 {
            return addr;
        }
        let line = addr / 128;
        let chunk = (addr / 16) % chunks;
        addr - chunk * 16 + ((chunk ^ (line % chunks)) * 16)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Major {
    K,
    Mn,
}

/// How an operand sits in shared memory. `alt`: for no swizzle, the other arrangement of
/// core matrices (K-neighbours adjacent instead of MN-neighbours), which swaps the roles of
/// LBO and SBO's sizes and so catches a mix-up.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub major: Major,
    pub swz: Swz,
    pub alt: bool,
}

/// An operand placed for `ksteps` k-steps: its bytes, each step's start (relative to the
/// operand's region), and the LBO/SBO its descriptor needs.
pub struct Placed {
    pub bytes: Vec<u8>,
    pub starts: Vec<usize>,
    pub lbo: usize,
    pub sbo: usize,
}

/// Places an `mn`×(16·`ksteps`) matrix (`value(mn, k)`, k over all steps) as `layout` says.
pub fn place(
    layout: Layout,
    mn: usize,
    ksteps: usize,
    value: &dyn Fn(usize, usize) -> u16,
) -> Placed {
    let w = layout.swz.width();
    // (bytes per k-step tile or per tile of several k-steps, offset of (r, k) within the step)
    let mut bytes;
    let mut starts = Vec::new();
    let (lbo, sbo);
    let put = |bytes: &mut Vec<u8>, at: usize, v: u16| {
        let at = layout.swz.apply(at);
        if bytes.len() < at + 2 {
            bytes.resize(at + 2, 0);
        }
        bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    };
    match (layout.major, w) {
        (Major::K, 0) => {
            // Core matrices: 8 rows of 16 bytes; (row block i, k block j) of a step's tile.
            let tile = mn * 32;
            (lbo, sbo) = if layout.alt {
                (mn * 16, 128)
            } else {
                (128, 256)
            };
            bytes = vec![0; tile * ksteps];
            for s in 0..ksteps {
                starts.push(s * tile);
                for r in 0..mn {
                    for k in 0..16 {
                        let at =
                            s * tile + (r / 8) * sbo + (k / 8) * lbo + (r % 8) * 16 + (k % 8) * 2;
                        put(&mut bytes, at, value(r, 16 * s + k));
                    }
                }
            }
        }
        (Major::K, w) => {
            // Rows of W bytes holding W/2 consecutive k; a step advances 32 bytes in the row.
            let per_tile = w / 32;
            let tile = mn * w;
            (lbo, sbo) = (16, 8 * w);
            bytes = vec![0; tile * ksteps.div_ceil(per_tile)];
            for s in 0..ksteps {
                let base = (s / per_tile) * tile;
                starts.push(base + (s % per_tile) * 32);
                for r in 0..mn {
                    for k in 0..16 {
                        let at = base + r * w + (s % per_tile) * 32 + k * 2;
                        put(&mut bytes, at, value(r, 16 * s + k));
                    }
                }
            }
        }
        (Major::Mn, 0) => {
            // Core matrices: 8 k-rows of 16 bytes (8 consecutive mn).
            let tile = mn * 32;
            (lbo, sbo) = if layout.alt {
                (128, 256)
            } else {
                (mn * 16, 128)
            };
            bytes = vec![0; tile * ksteps];
            for s in 0..ksteps {
                starts.push(s * tile);
                for r in 0..mn {
                    for k in 0..16 {
                        let at =
                            s * tile + (r / 8) * sbo + (k / 8) * lbo + (k % 8) * 16 + (r % 8) * 2;
                        put(&mut bytes, at, value(r, 16 * s + k));
                    }
                }
            }
        }
        (Major::Mn, w) => {
            // Boxes W/2 elements of mn wide, 16 k-rows of W bytes each, side by side.
            let per_box = w / 2;
            let boxes = mn.div_ceil(per_box);
            let tile = boxes * 16 * w;
            (lbo, sbo) = (16 * w, 8 * w);
            bytes = vec![0; tile * ksteps];
            for s in 0..ksteps {
                starts.push(s * tile);
                for r in 0..mn {
                    for k in 0..16 {
                        let at = s * tile + (r / per_box) * lbo + k * w + (r % per_box) * 2;
                        put(&mut bytes, at, value(r, 16 * s + k));
                    }
                }
            }
        }
    }
    Placed {
        bytes,
        starts,
        lbo,
        sbo,
    }
}

/// The descriptor bits other than the start address.
pub fn desc_hi(p: &Placed, swz: Swz) -> u64 {
    (((p.lbo as u64) >> 4) << 16) | (((p.sbo as u64) >> 4) << 32) | (swz.layout_code() << 62)
}

/// A planted fault in the kernel text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    None,
    /// No `wgmma.fence` at all.
    NoFence,
    /// The accumulators are initialised after the fence, before the first wgmma.
    WriteAfterFence,
    /// An accumulator is stored between commit and wait.
    ReadBeforeWait,
    /// No commit/wait: the warps exit with the wgmmas pending.
    NoWait,
    /// Warp 3 branches around the wgmma.
    SkipWarp3,
    /// Odd lanes branch around the wgmma.
    SplitLanes,
    /// No `fence.proxy.async` between the threads' stores to shared memory and the wgmma.
    NoProxyFence,
    /// Every thread stores to A's first bytes between commit and wait (the wgmma may still
    /// be reading them).
    StoreBeforeWait,
    /// Control for `StoreBeforeWait`: the same store after the wait (not a fault).
    StoreAfterWait,
}

#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub n: usize,
    pub ksteps: usize,
    pub a_regs: bool,
    pub a: Layout,
    pub b: Layout,
    pub f16_in: bool,
    pub f16_out: bool,
    pub negate_a: bool,
    pub negate_b: bool,
    /// Step 0 has scale-d false (D = A·B), discarding the accumulators' initial 7.0.
    pub overwrite_first: bool,
    /// commit + wait 0 after every step (else once at the end, wgmmas chained in flight).
    pub wait_each: bool,
    pub fault: Fault,
}

pub const K_MAJOR_128: Layout = Layout {
    major: Major::K,
    swz: Swz::B128,
    alt: false,
};

impl Case {
    pub fn new(n: usize) -> Case {
        Case {
            n,
            ksteps: 2,
            a_regs: false,
            a: K_MAJOR_128,
            b: K_MAJOR_128,
            f16_in: false,
            f16_out: false,
            negate_a: false,
            negate_b: false,
            overwrite_first: false,
            wait_each: false,
            fault: Fault::None,
        }
    }
    /// Accumulator registers per thread.
    pub fn nd(&self) -> usize {
        if self.f16_out {
            self.n / 4
        } else {
            self.n / 2
        }
    }
}

pub const A_REGION: usize = 0;

pub fn align1024(x: usize) -> usize {
    x.div_ceil(1024) * 1024
}

/// Where B's region starts, and the shared bytes A and B need.
pub fn regions(pa: &Placed, pb: &Placed) -> (usize, usize) {
    let b_region = align1024(A_REGION + pa.bytes.len());
    (b_region, align1024(b_region + pb.bytes.len()))
}

/// The shared bytes case `c` needs.
pub fn smem_of(c: &Case) -> usize {
    let zero = |_: usize, _: usize| 0u16;
    regions(
        &place(c.a, 64, c.ksteps, &zero),
        &place(c.b, c.n, c.ksteps, &zero),
    )
    .1
}

/// The kernel for `c`, with `smem` bytes of shared memory.
pub fn kernel_text(c: &Case, smem: usize) -> String {
    let nd = c.nd();
    let ty = if c.f16_in { "f16" } else { "bf16" };
    let dt = if c.f16_out { "f16" } else { "f32" };
    let dregs: Vec<String> = (0..nd).map(|j| format!("%d{j}")).collect();
    let dvec = format!("{{{}}}", dregs.join(", "));
    let init: String = dregs
        .iter()
        .map(|d| {
            if c.f16_out {
                // 7.0 in both halves.
                format!("    mov.b32 {d}, 0x47004700;\n")
            } else {
                format!("    mov.f32 {d}, 0f40E00000;\n")
            }
        })
        .collect();
    let scale_d = if c.overwrite_first { "%p2" } else { "1" };
    let sa = if c.negate_a { "-1" } else { "1" };
    let sb = if c.negate_b { "-1" } else { "1" };
    let tb = u8::from(c.b.major == Major::Mn);
    let ta = u8::from(c.a.major == Major::Mn);
    let (a_operand, trans, a_load) = if c.a_regs {
        (
            "{%a0, %a1, %a2, %a3}".to_string(),
            format!("{tb}"),
            // This step's fragment: afrag + (step·128 + tid)·16.
            "    mul.lo.u32 %r12, %r9, 128;
    add.u32 %r12, %r12, %r2;
    mul.wide.u32 %rd12, %r12, 16;
    add.s64 %rd13, %rd7, %rd12;
    ld.global.v4.u32 {%a0, %a1, %a2, %a3}, [%rd13];\n"
                .to_string(),
        )
    } else {
        ("%rd10".to_string(), format!("{ta}, {tb}"), String::new())
    };
    let (init_before, init_after) = if c.fault == Fault::WriteAfterFence {
        (String::new(), init)
    } else {
        (init, String::new())
    };
    let fence = if c.fault == Fault::NoFence {
        ""
    } else {
        "    wgmma.fence.sync.aligned;\n"
    };
    let skip = match c.fault {
        Fault::SkipWarp3 => "    setp.ge.u32 %p1, %r2, 96;\n    @%p1 bra SKIP;\n",
        Fault::SplitLanes => {
            "    and.b32 %r13, %r2, 1;\n    setp.ne.u32 %p1, %r13, 0;\n    @%p1 bra SKIP;\n"
        }
        _ => "",
    };
    let store_early = match c.fault {
        Fault::ReadBeforeWait => "    st.global.b32 [%rd16], %d0;\n",
        Fault::StoreBeforeWait => "    st.shared.u32 [%r3], %r2;\n",
        _ => "",
    };
    let store_late = if c.fault == Fault::StoreAfterWait {
        "    st.shared.u32 [%r3], %r2;\n"
    } else {
        ""
    };
    let (commit, wait) = if c.fault == Fault::NoWait {
        ("", "")
    } else {
        (
            "    wgmma.commit_group.sync.aligned;\n",
            "    wgmma.wait_group.sync.aligned 0;\n",
        )
    };
    let (step_sync, end_sync) = if c.wait_each {
        (format!("{commit}{wait}"), String::new())
    } else {
        (
            String::new(),
            format!("{commit}{store_early}{wait}{store_late}"),
        )
    };
    // Without a wait the stores would read pending accumulators: leave them out so the warps
    // reach their exit with the wgmmas pending.
    let store_regs = if c.fault == Fault::NoWait {
        &dregs[..0]
    } else {
        &dregs[..]
    };
    let stores: String = store_regs
        .iter()
        .enumerate()
        .map(|(j, d)| format!("    st.global.b32 [%rd16+{}], {d};\n", 4 * j))
        .collect();
    let dreg_ty = if c.f16_out { ".b32" } else { ".f32" };
    format!(
        ".version 8.0
.target sm_90a
.address_size 64
.visible .entry wg(.param .u64 img, .param .u32 img_chunks, .param .u64 starts,
    .param .u64 adesc_hi, .param .u64 bdesc_hi, .param .u64 afrag, .param .u64 out)
{{
    .shared .align 1024 .b8 smem[{smem}];
    .reg .pred %p<4>;
    .reg .b32 %r<24>;
    .reg .b64 %rd<24>;
    .reg {dreg_ty} %d<{nd}>;
    .reg .b32 %a<4>;
    ld.param.u64 %rd1, [img];
    cvta.to.global.u64 %rd1, %rd1;
    ld.param.u32 %r1, [img_chunks];
    mov.u32 %r2, %tid.x;
    mov.u32 %r3, smem;
COPY:
    setp.ge.u32 %p1, %r2, %r1;
    @%p1 bra COPIED;
    mul.wide.u32 %rd2, %r2, 16;
    add.s64 %rd3, %rd1, %rd2;
    ld.global.v4.u32 {{%r4, %r5, %r6, %r7}}, [%rd3];
    shl.b32 %r8, %r2, 4;
    add.u32 %r8, %r8, %r3;
    st.shared.v4.u32 [%r8], {{%r4, %r5, %r6, %r7}};
    add.u32 %r2, %r2, 128;
    bra COPY;
COPIED:
    {proxy_fence}bar.sync 0;
    mov.u32 %r2, %tid.x;
    ld.param.u64 %rd4, [starts];
    cvta.to.global.u64 %rd4, %rd4;
    ld.param.u64 %rd5, [adesc_hi];
    ld.param.u64 %rd6, [bdesc_hi];
    ld.param.u64 %rd7, [afrag];
    cvta.to.global.u64 %rd7, %rd7;
    ld.param.u64 %rd14, [out];
    cvta.to.global.u64 %rd14, %rd14;
    mul.wide.u32 %rd15, %r2, {row_bytes};
    add.s64 %rd16, %rd14, %rd15;
{init_before}{skip}    mov.u32 %r9, 0;
STEP:
    mul.wide.u32 %rd8, %r9, 8;
    add.s64 %rd9, %rd4, %rd8;
    ld.global.v2.u32 {{%r10, %r11}}, [%rd9];
    add.u32 %r10, %r10, %r3;
    add.u32 %r11, %r11, %r3;
    cvt.u64.u32 %rd10, %r10;
    shr.u64 %rd10, %rd10, 4;
    and.b64 %rd10, %rd10, 16383;
    or.b64 %rd10, %rd10, %rd5;
    cvt.u64.u32 %rd11, %r11;
    shr.u64 %rd11, %rd11, 4;
    and.b64 %rd11, %rd11, 16383;
    or.b64 %rd11, %rd11, %rd6;
{a_load}    setp.ne.u32 %p2, %r9, 0;
{fence}{init_after}    wgmma.mma_async.sync.aligned.m64n{n}k16.{dt}.{ty}.{ty} {dvec}, {a_operand}, %rd11, {scale_d}, {sa}, {sb}, {trans};
{step_sync}    add.u32 %r9, %r9, 1;
    setp.lt.u32 %p3, %r9, {ksteps};
    @%p3 bra STEP;
{end_sync}SKIP:
{stores}    ret;
}}
",
        n = c.n,
        ksteps = c.ksteps,
        proxy_fence = if c.fault == Fault::NoProxyFence {
            ""
        } else {
            // The writers' generic stores become visible to wgmma's async proxy.
            "fence.proxy.async;\n    "
        },
        row_bytes = 4 * nd,
    )
}

/// Small integers (exact products and sums) or values in [-1, 1).
pub fn draw(g: &mut Gen, f16: bool, integers: bool) -> u16 {
    let x = if integers {
        (g.next_u64() % 7) as f32 - 3.0
    } else {
        g.unit()
    };
    if f16 {
        half::f16::from_f32(x).to_bits()
    } else {
        half::bf16::from_f32(x).to_bits()
    }
}

pub fn widen(bits: u16, f16: bool) -> f64 {
    if f16 {
        f64::from(half::f16::from_bits(bits).to_f32())
    } else {
        f64::from(f32::from_bits(u32::from(bits) << 16))
    }
}

/// What a run gives back: D (64×N) as f64, and for each element Σ|terms| (for tolerances).
pub struct Outcome {
    pub d: Vec<f64>,
    pub want: Vec<f64>,
    pub magnitude: Vec<f64>,
}

/// Runs case `c` with inputs from `seed`; the error is the launch's.
pub fn run_case(
    c: &Case,
    seed: u64,
    integers: bool,
    numerics: MmaNumerics,
) -> Result<Outcome, PtxError> {
    run_case_with(c, seed, integers, numerics, |_, _| {})
}

/// [`run_case`], with `tamper` changing the A and B descriptors' high bits first.
pub fn run_case_with(
    c: &Case,
    seed: u64,
    integers: bool,
    numerics: MmaNumerics,
    tamper: impl Fn(&mut u64, &mut u64),
) -> Result<Outcome, PtxError> {
    let mut g = Gen(seed);
    let kt = 16 * c.ksteps;
    let a: Vec<u16> = (0..64 * kt)
        .map(|_| draw(&mut g, c.f16_in, integers))
        .collect();
    let b: Vec<u16> = (0..c.n * kt)
        .map(|_| draw(&mut g, c.f16_in, integers))
        .collect();
    let (a_at, b_at) = (
        |m: usize, k: usize| a[m * kt + k],
        |n: usize, k: usize| b[n * kt + k],
    );
    let pa = place(c.a, 64, c.ksteps, &a_at);
    let pb = place(c.b, c.n, c.ksteps, &b_at);
    let (b_region, smem) = regions(&pa, &pb);
    let mut img = vec![0u8; smem];
    if !c.a_regs {
        img[A_REGION..A_REGION + pa.bytes.len()].copy_from_slice(&pa.bytes);
    }
    img[b_region..b_region + pb.bytes.len()].copy_from_slice(&pb.bytes);
    let mut starts = Vec::new();
    for s in 0..c.ksteps {
        starts.extend_from_slice(&((A_REGION + pa.starts[s]) as u32).to_le_bytes());
        starts.extend_from_slice(&((b_region + pb.starts[s]) as u32).to_le_bytes());
    }
    // A's fragments: thread t, register j, half h holds element e = 2j + h of the ISA's
    // m64nNk16 A layout: row 16·warp + groupID + 8·((e/2)%2), k 2·tig + e%2 + 8·(e/4).
    let mut afrag = Vec::new();
    for s in 0..c.ksteps {
        for t in 0..128 {
            let (warp, lane) = (t / 32, t % 32);
            let (group, tig) = (lane / 4, lane % 4);
            for j in 0..4 {
                let mut word = 0u32;
                for h in 0..2 {
                    let e = 2 * j + h;
                    let row = 16 * warp + group + 8 * ((e / 2) % 2);
                    let k = 2 * tig + e % 2 + 8 * (e / 4);
                    word |= u32::from(a_at(row, 16 * s + k)) << (16 * h);
                }
                afrag.extend_from_slice(&word.to_le_bytes());
            }
        }
    }
    let (mut adh, mut bdh) = (desc_hi(&pa, c.a.swz), desc_hi(&pb, c.b.swz));
    tamper(&mut adh, &mut bdh);
    let text = kernel_text(c, smem);
    let module = Module::parse(&text).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let mut mem = DeviceMemory::new();
    let img_buf = mem.alloc(img.len(), "img");
    mem.write(img_buf, &img)?;
    let starts_buf = mem.alloc(starts.len(), "starts");
    mem.write(starts_buf, &starts)?;
    let afrag_buf = mem.alloc(afrag.len(), "afrag");
    mem.write(afrag_buf, &afrag)?;
    let nd = c.nd();
    let out = mem.alloc(128 * nd * 4, "out");
    let mut params = Vec::new();
    params.extend_from_slice(&img_buf.to_le_bytes());
    params.extend_from_slice(&((img.len() / 16) as u32).to_le_bytes());
    params.extend_from_slice(&[0u8; 4]);
    params.extend_from_slice(&starts_buf.to_le_bytes());
    params.extend_from_slice(&adh.to_le_bytes());
    params.extend_from_slice(&bdh.to_le_bytes());
    params.extend_from_slice(&afrag_buf.to_le_bytes());
    params.extend_from_slice(&out.to_le_bytes());
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [128, 1, 1],
        dynamic_shared_bytes: 0,
    };
    let checks = Checks {
        mma: numerics,
        ..Checks::default()
    };
    launch(&module, "wg", &dims, &params, &mut mem, &checks)?;
    let mut raw = vec![0u8; 128 * nd * 4];
    mem.read(out, &mut raw)?;
    // D's fragment: thread t, element i is row 16·warp + groupID + 8·((i/2)%2), column
    // 8·(i/4) + 2·tig + i%2; .f16 packs elements 2j and 2j+1 into register j.
    let mut d = vec![0f64; 64 * c.n];
    for t in 0..128 {
        let (warp, lane) = (t / 32, t % 32);
        let (group, tig) = (lane / 4, lane % 4);
        for i in 0..c.n / 2 {
            let word_at = |j: usize| {
                let at = (t * nd + j) * 4;
                u32::from_le_bytes(raw[at..at + 4].try_into().unwrap())
            };
            let v = if c.f16_out {
                let word = word_at(i / 2);
                f64::from(half::f16::from_bits((word >> (16 * (i % 2))) as u16).to_f32())
            } else {
                f64::from(f32::from_bits(word_at(i)))
            };
            let row = 16 * warp + group + 8 * ((i / 2) % 2);
            let col = 8 * (i / 4) + 2 * tig + i % 2;
            d[row * c.n + col] = v;
        }
    }
    let (sa, sb) = (
        if c.negate_a { -1.0 } else { 1.0 },
        if c.negate_b { -1.0 } else { 1.0 },
    );
    let mut want = vec![0f64; 64 * c.n];
    let mut magnitude = vec![0f64; 64 * c.n];
    for m in 0..64 {
        for n in 0..c.n {
            let mut acc = if c.overwrite_first { 0.0 } else { 7.0 };
            let mut mag = acc;
            for k in 0..kt {
                let p = sa * widen(a_at(m, k), c.f16_in) * sb * widen(b_at(n, k), c.f16_in);
                acc += p;
                mag += p.abs();
            }
            want[m * c.n + n] = acc;
            magnitude[m * c.n + n] = mag;
        }
    }
    Ok(Outcome { d, want, magnitude })
}

/// Runs `c` on integer inputs and requires D to equal the product exactly.
pub fn check_exact(c: &Case, seed: u64) {
    let o = run_case(c, seed, true, MmaNumerics::Exact).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let bad = mismatches(&o, c.n);
    assert!(
        bad.is_empty(),
        "{c:?}: {} wrong elements, first {:?}",
        bad.len(),
        &bad[..bad.len().min(4)]
    );
}

/// (row, col, got, want) of every element that differs from the product.
pub fn mismatches(o: &Outcome, n: usize) -> Vec<(usize, usize, f64, f64)> {
    (0..o.d.len())
        .filter(|&i| o.d[i] != o.want[i])
        .map(|i| (i / n, i % n, o.d[i], o.want[i]))
        .collect()
}
