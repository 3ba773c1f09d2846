//! The memory arena planner: every buffer of a training step in one allocation.
//!
//! Each buffer is requested with its size, alignment, category and lifetime: the
//! first and last step-schedule index at which it is used (both inclusive). The
//! planner gives every buffer an offset in one allocation such that two buffers
//! whose lifetimes overlap never share a byte, while buffers whose lifetimes do not
//! overlap may. The plan's peak (the allocation's size) is known before any memory
//! is touched, so a configuration that does not fit is refused up front, naming the
//! bytes needed and available and the largest batch that would fit.
//!
//! Algorithm: greedy by size. Buffers are taken largest first (ties broken by first
//! use, then name, then request order, so the plan is deterministic); each one goes
//! at an offset that does not collide with any already-placed buffer whose lifetime
//! overlaps its own. Two placement rules are tried, lowest offset (first fit) and
//! smallest sufficient gap (best fit), and the plan with the lower peak is kept
//! (first fit on a tie). Offsets are multiples of `max(align, ARENA_ALIGN)`.
//!
//! That search compares each buffer with every buffer placed before it: quadratic, fine
//! for the few hundred buffers of a real model's step (35 a layer: paper-2b has ~900).
//! Past [`GREEDY_MAX_BUFFERS`] (a step of thousands of layers, or a long `--buffers`
//! file) the plan is made in schedule order instead, like an allocator replaying the
//! step: at each schedule index the buffers that died before it are freed, then the ones
//! born there are placed (largest first) in the smallest free range that fits, else on
//! top. That is O(n log n), so a list of millions is planned in seconds; the plan is as
//! sound, and on a layered step (a layer's buffers are born and die together) its peak
//! stays close to the largest live set.
//!
//! The breakdown splits the peak by category: `requested` sums every buffer of the
//! category as if nothing were shared; `at_peak` counts the bytes of each category
//! live at the busiest step of the schedule (the step with the largest live set).
//! `at_peak` over all categories plus `fragmentation` equals the peak.
//!
//! # Examples
//! ```
//! use frugal_runtime::arena::{plan, BufferRequest, Category};
//! let reqs = vec![
//!     BufferRequest::new("weights", Category::Params, 1000, 0, 9),
//!     BufferRequest::new("act0", Category::Activations, 4096, 0, 4),
//!     BufferRequest::new("act1", Category::Activations, 4096, 5, 9), // may reuse act0's bytes
//! ];
//! let p = plan(&reqs).unwrap();
//! assert_eq!(p.peak_bytes, 4096 + 1024); // act0 and act1 share; weights padded to 256
//! ```

use std::fmt;

use crate::error::{gib, RuntimeError};

/// The most buffers the greedy planner takes (its cost is quadratic in them); longer
/// lists are placed in schedule order ([`PlacementRule::ScheduleOrder`]).
pub const GREEDY_MAX_BUFFERS: usize = 2048;

/// Alignment of every offset in the arena, in bytes (what `cudaMalloc` guarantees
/// for whole allocations, and enough for 16-byte vector loads and TMA descriptors'
/// 128-byte base requirement).
pub const ARENA_ALIGN: u64 = 256;

/// What a buffer holds, for the memory breakdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// Model weights as the forward pass reads them (bf16).
    Params,
    /// Weight gradients.
    Grads,
    /// fp32 master copy of the weights.
    MasterWeights,
    /// Optimizer state (AdamW first and second moments).
    OptimizerMoments,
    /// Activations kept for the backward pass, and activation gradients.
    Activations,
    /// Scratch space of kernels (matmul split-K, softmax statistics, ...).
    Workspace,
    /// Communication buckets for the gradient all-reduce.
    CommBuckets,
}

impl Category {
    /// Every category, in the order the breakdown prints them.
    pub const ALL: [Category; 7] = [
        Category::Params,
        Category::Grads,
        Category::MasterWeights,
        Category::OptimizerMoments,
        Category::Activations,
        Category::Workspace,
        Category::CommBuckets,
    ];

    /// The name used in tables and in the `frugal arena --buffers` file format.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Params => "params",
            Category::Grads => "grads",
            Category::MasterWeights => "master",
            Category::OptimizerMoments => "moments",
            Category::Activations => "activations",
            Category::Workspace => "workspace",
            Category::CommBuckets => "comm",
        }
    }

    /// Parses a name as [`Category::as_str`] writes it (a few synonyms accepted).
    pub fn parse(s: &str) -> Option<Category> {
        let s = s.to_ascii_lowercase();
        Some(match s.as_str() {
            "params" | "param" | "weights" => Category::Params,
            "grads" | "grad" | "gradients" => Category::Grads,
            "master" | "master_weights" | "masterweights" => Category::MasterWeights,
            "moments" | "optimizer" | "optimizer_moments" | "adam" => Category::OptimizerMoments,
            "activations" | "act" | "acts" => Category::Activations,
            "workspace" | "scratch" => Category::Workspace,
            "comm" | "comm_buckets" | "buckets" => Category::CommBuckets,
            _ => return None,
        })
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One buffer the step needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferRequest {
    /// A unique, readable name, e.g. "layer3.attn.qkv.out".
    pub name: String,
    /// What it holds.
    pub category: Category,
    /// Size in bytes.
    pub bytes: u64,
    /// Required alignment in bytes (a power of two; raised to [`ARENA_ALIGN`]).
    pub align: u64,
    /// First step-schedule index that uses it (inclusive).
    pub first_use: u32,
    /// Last step-schedule index that uses it (inclusive).
    pub last_use: u32,
}

impl BufferRequest {
    /// A request with the arena's default alignment.
    pub fn new(
        name: impl Into<String>,
        category: Category,
        bytes: u64,
        first_use: u32,
        last_use: u32,
    ) -> Self {
        BufferRequest {
            name: name.into(),
            category,
            bytes,
            align: ARENA_ALIGN,
            first_use,
            last_use,
        }
    }

    /// True when the two lifetimes share at least one schedule index.
    pub fn overlaps_in_time(&self, other: &BufferRequest) -> bool {
        self.first_use <= other.last_use && other.first_use <= self.last_use
    }
}

/// A buffer with its place in the arena.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedBuffer {
    /// The request, as given.
    pub request: BufferRequest,
    /// Byte offset from the arena's base; a multiple of `max(align, ARENA_ALIGN)`.
    pub offset: u64,
}

impl PlacedBuffer {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.request.bytes
    }
}

/// Bytes of one category, both as requested and as live at the busiest step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CategoryUsage {
    /// The category.
    pub category: Category,
    /// Number of buffers.
    pub count: usize,
    /// Sum of the buffers' bytes, as if nothing were shared.
    pub requested: u64,
    /// Bytes of this category live at the busiest step.
    pub at_peak: u64,
}

/// The arena plan: every buffer's offset, the peak and the breakdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The buffers in request order.
    pub buffers: Vec<PlacedBuffer>,
    /// Size of the one allocation: the end of the highest buffer, rounded up to
    /// [`ARENA_ALIGN`].
    pub peak_bytes: u64,
    /// The largest sum of bytes live at one schedule index (a lower bound on any plan).
    pub max_live_bytes: u64,
    /// The schedule index where the live set is largest (the earliest on a tie).
    pub busiest_step: u32,
    /// `peak_bytes - sum(at_peak)`: bytes lost to alignment and to gaps.
    pub fragmentation: u64,
    /// Per category, in [`Category::ALL`] order; categories with no buffer are left out.
    pub breakdown: Vec<CategoryUsage>,
    /// Which placement rule produced the plan.
    pub rule: PlacementRule,
    /// How the breakdown names a category, where not by [`Category::as_str`]: e.g.
    /// "master (shard 1/8)" for one rank's share of a sharded job ([`Plan::labelled`]).
    pub labels: Vec<(Category, String)>,
}

/// How the planner chooses among the free gaps for a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacementRule {
    /// The lowest offset that fits.
    FirstFit,
    /// The smallest gap that fits (the top of the arena counts as an unbounded gap).
    BestFit,
    /// Lists longer than [`GREEDY_MAX_BUFFERS`]: placed in schedule order, each buffer in
    /// the smallest range free from its first use to its last.
    ScheduleOrder,
}

impl Plan {
    /// The plan with the breakdown naming `labels`' categories by their text (a
    /// category's bytes are one rank's share, say, of a sharded job's state).
    pub fn labelled(mut self, labels: Vec<(Category, String)>) -> Plan {
        self.labels = labels;
        self
    }

    /// What the breakdown calls `category`.
    pub fn label(&self, category: Category) -> &str {
        self.labels
            .iter()
            .find(|(c, _)| *c == category)
            .map_or(category.as_str(), |(_, l)| l.as_str())
    }

    /// The placed buffer called `name`.
    pub fn get(&self, name: &str) -> Option<&PlacedBuffer> {
        self.buffers.iter().find(|b| b.request.name == name)
    }

    /// Sum of every buffer's bytes, as if nothing were shared.
    pub fn requested_bytes(&self) -> u64 {
        self.buffers.iter().map(|b| b.request.bytes).sum()
    }

    /// The plan as a table: one line per buffer (by offset), then the breakdown.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let name_w = self
            .buffers
            .iter()
            .map(|b| b.request.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        out.push_str(&format!(
            "{:<name_w$}  {:<11}  {:>14}  {:>14}  {:>14}  {:>5}  {:>5}\n",
            "name", "category", "offset", "bytes", "end", "first", "last"
        ));
        let mut order: Vec<&PlacedBuffer> = self.buffers.iter().collect();
        order.sort_by(|a, b| (a.offset, &a.request.name).cmp(&(b.offset, &b.request.name)));
        for b in order {
            let r = &b.request;
            out.push_str(&format!(
                "{:<name_w$}  {:<11}  {:>14}  {:>14}  {:>14}  {:>5}  {:>5}\n",
                r.name,
                r.category.as_str(),
                b.offset,
                r.bytes,
                b.end(),
                r.first_use,
                r.last_use
            ));
        }
        out.push('\n');
        out.push_str(&self.breakdown_table());
        out
    }

    /// The breakdown by category, with totals.
    pub fn breakdown_table(&self) -> String {
        let mut out = String::new();
        let w = self
            .breakdown
            .iter()
            .map(|u| self.label(u.category).chars().count())
            .max()
            .unwrap_or(0)
            .max(13);
        out.push_str(&format!(
            "{:<w$}  {:>7}  {:>16}  {:>11}  {:>16}  {:>11}\n",
            "category", "buffers", "requested", "", "at peak", ""
        ));
        for u in &self.breakdown {
            out.push_str(&format!(
                "{:<w$}  {:>7}  {:>16}  {:>11}  {:>16}  {:>11}\n",
                self.label(u.category),
                u.count,
                u.requested,
                gib(u.requested),
                u.at_peak,
                gib(u.at_peak)
            ));
        }
        out.push_str(&format!(
            "{:<w$}  {:>7}  {:>16}  {:>11}  {:>16}  {:>11}\n",
            "fragmentation",
            "",
            "",
            "",
            self.fragmentation,
            gib(self.fragmentation)
        ));
        let requested = self.requested_bytes();
        out.push_str(&format!(
            "{:<w$}  {:>7}  {:>16}  {:>11}  {:>16}  {:>11}\n",
            "total",
            self.buffers.len(),
            requested,
            gib(requested),
            self.peak_bytes,
            gib(self.peak_bytes)
        ));
        out.push_str(&format!(
            "peak {} bytes ({}); largest live set {} bytes at step {}; sharing saves {} bytes ({} placement)\n",
            self.peak_bytes,
            gib(self.peak_bytes),
            self.max_live_bytes,
            self.busiest_step,
            requested.saturating_sub(self.peak_bytes),
            match self.rule {
                PlacementRule::FirstFit => "first-fit",
                PlacementRule::BestFit => "best-fit",
                PlacementRule::ScheduleOrder => "schedule-order",
            }
        ));
        out
    }
}

fn align_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}

fn check(r: &BufferRequest) -> Result<u64, RuntimeError> {
    let bad = |reason: String| RuntimeError::BadRequest {
        name: r.name.clone(),
        reason,
    };
    if r.align == 0 || !r.align.is_power_of_two() {
        return Err(bad(format!("alignment {} is not a power of two", r.align)));
    }
    if r.first_use > r.last_use {
        return Err(bad(format!(
            "first use {} is after last use {}",
            r.first_use, r.last_use
        )));
    }
    // Keep every end offset far from u64 overflow.
    if r.bytes > (1u64 << 56) {
        return Err(bad(format!(
            "{} bytes is not a plausible buffer size",
            r.bytes
        )));
    }
    Ok(r.align.max(ARENA_ALIGN))
}

/// Plans the arena for `requests`.
///
/// # Errors
/// `BadRequest` for an alignment that is not a power of two, a first use after the
/// last use, an absurd size, or two requests with the same name.
pub fn plan(requests: &[BufferRequest]) -> Result<Plan, RuntimeError> {
    let mut aligns = Vec::with_capacity(requests.len());
    for r in requests {
        aligns.push(check(r)?);
    }
    let mut names: Vec<&str> = requests.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(RuntimeError::BadRequest {
            name: w[0].to_string(),
            reason: "the name is requested twice".into(),
        });
    }

    // Largest first; ties by first use, name, then request order (names are unique,
    // so the last key only matters for clarity).
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (&requests[a], &requests[b]);
        rb.bytes
            .cmp(&ra.bytes)
            .then(ra.first_use.cmp(&rb.first_use))
            .then(ra.name.cmp(&rb.name))
            .then(a.cmp(&b))
    });

    let (offsets, rule) = if requests.len() > GREEDY_MAX_BUFFERS {
        (
            place_in_schedule_order(requests, &aligns),
            PlacementRule::ScheduleOrder,
        )
    } else {
        let first = place(requests, &aligns, &order, PlacementRule::FirstFit);
        let best = place(requests, &aligns, &order, PlacementRule::BestFit);
        if peak_of(requests, &best) < peak_of(requests, &first) {
            (best, PlacementRule::BestFit)
        } else {
            (first, PlacementRule::FirstFit)
        }
    };
    let peak_bytes = peak_of(requests, &offsets);

    let (max_live_bytes, busiest_step) = busiest(requests);
    let mut breakdown: Vec<CategoryUsage> = Category::ALL
        .iter()
        .map(|&category| CategoryUsage {
            category,
            count: 0,
            requested: 0,
            at_peak: 0,
        })
        .collect();
    for r in requests {
        let i = Category::ALL
            .iter()
            .position(|&c| c == r.category)
            .unwrap_or(0);
        let u = &mut breakdown[i];
        u.count += 1;
        u.requested += r.bytes;
        if r.first_use <= busiest_step && busiest_step <= r.last_use {
            u.at_peak += r.bytes;
        }
    }
    breakdown.retain(|u| u.count > 0);
    let at_peak_total: u64 = breakdown.iter().map(|u| u.at_peak).sum();
    let buffers = requests
        .iter()
        .zip(offsets)
        .map(|(r, offset)| PlacedBuffer {
            request: r.clone(),
            offset,
        })
        .collect();
    Ok(Plan {
        buffers,
        peak_bytes,
        max_live_bytes,
        busiest_step,
        fragmentation: peak_bytes - at_peak_total,
        breakdown,
        rule,
        labels: Vec::new(),
    })
}

fn peak_of(requests: &[BufferRequest], offsets: &[u64]) -> u64 {
    let top = requests
        .iter()
        .zip(offsets)
        .map(|(r, &o)| o + r.bytes)
        .max()
        .unwrap_or(0);
    align_up(top, ARENA_ALIGN)
}

/// The largest live set and the earliest step where it occurs. The live set only
/// grows at a first use, so only those steps need checking; one sweep over the first
/// and last uses, in order, keeps the live sum.
fn busiest(requests: &[BufferRequest]) -> (u64, u32) {
    let mut births: Vec<(u32, u64)> = requests.iter().map(|r| (r.first_use, r.bytes)).collect();
    let mut deaths: Vec<(u32, u64)> = requests.iter().map(|r| (r.last_use, r.bytes)).collect();
    births.sort_unstable();
    deaths.sort_unstable();
    let (mut live, mut best) = (0u64, (0u64, 0u32));
    let (mut b, mut d) = (0, 0);
    while b < births.len() {
        let s = births[b].0;
        while b < births.len() && births[b].0 == s {
            live += births[b].1;
            b += 1;
        }
        // Buffers whose last use is before `s` are not live at `s`.
        while d < deaths.len() && deaths[d].0 < s {
            live -= deaths[d].1;
            d += 1;
        }
        if live > best.0 {
            best = (live, s);
        }
    }
    best
}

/// Offsets (in request order) from replaying the schedule: at each index, free the
/// buffers last used before it, then place the ones first used there, largest first
/// (ties by name, then request order), each in the smallest free range that fits (the
/// lowest such range on a tie), else on top of the arena.
fn place_in_schedule_order(requests: &[BufferRequest], aligns: &[u64]) -> Vec<u64> {
    let mut offsets = vec![0u64; requests.len()];
    let mut births: Vec<usize> = (0..requests.len()).collect();
    births.sort_by(|&a, &b| {
        let (ra, rb) = (&requests[a], &requests[b]);
        ra.first_use
            .cmp(&rb.first_use)
            .then(rb.bytes.cmp(&ra.bytes))
            .then(ra.name.cmp(&rb.name))
            .then(a.cmp(&b))
    });
    let mut deaths: Vec<usize> = (0..requests.len()).collect();
    deaths.sort_by_key(|&i| (requests[i].last_use, i));
    let mut free = FreeRanges::default();
    let mut d = 0;
    for &i in &births {
        let r = &requests[i];
        while d < deaths.len() && requests[deaths[d]].last_use < r.first_use {
            let j = deaths[d];
            d += 1;
            if requests[j].bytes > 0 {
                free.release(offsets[j], offsets[j] + requests[j].bytes);
            }
        }
        if r.bytes > 0 {
            offsets[i] = free.take(r.bytes, aligns[i]);
        }
    }
    offsets
}

/// The free byte ranges below the top of an arena being replayed, coalesced, indexed by
/// start (to merge neighbours) and by usable size (to find the smallest that fits in
/// O(log n): a layered step frees and reuses thousands of ranges).
#[derive(Default)]
struct FreeRanges {
    /// start -> end.
    by_start: std::collections::BTreeMap<u64, u64>,
    /// (bytes usable from the first [`ARENA_ALIGN`]ed offset, start).
    by_size: std::collections::BTreeSet<(u64, u64)>,
    /// The end of the highest buffer placed so far; everything above is free.
    top: u64,
}

impl FreeRanges {
    fn usable(start: u64, end: u64) -> u64 {
        end.saturating_sub(align_up(start, ARENA_ALIGN))
    }

    fn insert(&mut self, start: u64, end: u64) {
        if start < end {
            self.by_start.insert(start, end);
            self.by_size.insert((Self::usable(start, end), start));
        }
    }

    fn remove(&mut self, start: u64) {
        if let Some(end) = self.by_start.remove(&start) {
            self.by_size.remove(&(Self::usable(start, end), start));
        }
    }

    /// Frees `[start, end)`, merging it with the free ranges it touches.
    fn release(&mut self, mut start: u64, mut end: u64) {
        if let Some((&s, &e)) = self.by_start.range(..=start).next_back() {
            if e >= start {
                self.remove(s);
                start = s;
                end = end.max(e);
            }
        }
        while let Some((&s, &e)) = self.by_start.range(start..).next() {
            if s > end {
                break;
            }
            self.remove(s);
            end = end.max(e);
        }
        self.insert(start, end);
    }

    /// An offset (a multiple of `align`) for `bytes`, taken out of the free ranges, or
    /// on top of the arena (which then grows).
    fn take(&mut self, bytes: u64, align: u64) -> u64 {
        // Smallest usable range first; an alignment above the arena's may skip some.
        let fit = self
            .by_size
            .range((bytes, 0)..)
            .filter_map(|&(_, start)| Some((start, *self.by_start.get(&start)?)))
            .find(|&(start, end)| align_up(start, align) + bytes <= end);
        let at = match fit {
            Some((start, end)) => {
                self.remove(start);
                let at = align_up(start, align);
                self.insert(start, at);
                self.insert(at + bytes, end);
                at
            }
            None => {
                // Grow the arena, from the free range that ends at the top if there is one.
                let start = match self.by_start.iter().next_back() {
                    Some((&s, &e)) if e == self.top => {
                        self.remove(s);
                        s
                    }
                    _ => self.top,
                };
                let at = align_up(start, align);
                self.insert(start, at);
                at
            }
        };
        self.top = self.top.max(at + bytes);
        at
    }
}

/// Offsets (in request order) for buffers placed in `order` by `rule`.
fn place(
    requests: &[BufferRequest],
    aligns: &[u64],
    order: &[usize],
    rule: PlacementRule,
) -> Vec<u64> {
    let mut offsets: Vec<Option<u64>> = vec![None; requests.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(requests.len());
    let mut busy: Vec<(u64, u64)> = Vec::new();
    for &i in order {
        let r = &requests[i];
        let align = aligns[i];
        // Byte ranges already taken by buffers that are live at the same time.
        busy.clear();
        for &j in &placed {
            let o = &requests[j];
            if o.bytes > 0 && r.overlaps_in_time(o) {
                if let Some(off) = offsets[j] {
                    busy.push((off, off + o.bytes));
                }
            }
        }
        busy.sort_unstable();
        let offset = choose_gap(&busy, r.bytes, align, rule);
        offsets[i] = Some(offset);
        placed.push(i);
    }
    offsets.into_iter().map(|o| o.unwrap_or(0)).collect()
}

/// The offset for `bytes` among sorted (possibly overlapping) busy ranges.
fn choose_gap(busy: &[(u64, u64)], bytes: u64, align: u64, rule: PlacementRule) -> u64 {
    let mut cursor = 0u64; // end of the busy region scanned so far
    let mut best: Option<(u64, u64)> = None; // (gap size, offset)
    for &(start, end) in busy {
        let candidate = align_up(cursor, align);
        if candidate + bytes <= start {
            match rule {
                // (Schedule order never asks: it keeps its own free ranges.)
                PlacementRule::FirstFit | PlacementRule::ScheduleOrder => return candidate,
                PlacementRule::BestFit => {
                    let gap = start - cursor;
                    if best.is_none_or(|(g, _)| gap < g) {
                        best = Some((gap, candidate));
                    }
                }
            }
        }
        cursor = cursor.max(end);
    }
    match best {
        Some((_, offset)) => offset,
        None => align_up(cursor, align),
    }
}

/// Checks that `plan` fits in `available` bytes, before anything is allocated.
///
/// # Errors
/// `OutOfMemory` naming the bytes needed and available.
pub fn plan_fits(plan: &Plan, available: u64) -> Result<(), RuntimeError> {
    if plan.peak_bytes <= available {
        Ok(())
    } else {
        Err(RuntimeError::OutOfMemory {
            needed: plan.peak_bytes,
            available,
            largest_batch: None,
            batch: None,
        })
    }
}

/// The bytes a `--mem-target F` allows out of `free_bytes`.
pub fn budget(free_bytes: u64, fraction: f64) -> u64 {
    if fraction.is_finite() && fraction > 0.0 {
        (free_bytes as f64 * fraction.min(1.0)) as u64
    } else {
        0
    }
}

/// The largest micro-batch in `1..=max_batch` whose plan fits in `available` bytes,
/// with its plan. `requests_for(batch)` gives the step's buffers at that batch.
///
/// Assumes that memory grows with the batch (true of every training step: only
/// activations and workspaces depend on it), and binary-searches.
///
/// # Errors
/// `OutOfMemory` naming batch 1's needs when not even batch 1 fits; errors of
/// `requests_for` and of planning are passed on.
pub fn largest_batch_that_fits<F>(
    max_batch: usize,
    available: u64,
    mut requests_for: F,
) -> Result<(usize, Plan), RuntimeError>
where
    F: FnMut(usize) -> Result<Vec<BufferRequest>, RuntimeError>,
{
    let one = plan(&requests_for(1)?)?;
    if one.peak_bytes > available {
        return Err(RuntimeError::OutOfMemory {
            needed: one.peak_bytes,
            available,
            largest_batch: None,
            batch: Some(1),
        });
    }
    let (mut lo, mut lo_plan) = (1usize, one);
    let mut hi = max_batch.max(1) + 1; // first batch known (or assumed) not to fit
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let p = plan(&requests_for(mid)?)?;
        if p.peak_bytes <= available {
            lo = mid;
            lo_plan = p;
        } else {
            hi = mid;
        }
    }
    Ok((lo, lo_plan))
}

/// The plan for `batch`, or, if it does not fit in `available`, an error naming
/// the largest batch (up to `batch`) that would.
///
/// # Errors
/// `OutOfMemory` with `batch`, the bytes needed and available and `largest_batch`.
pub fn plan_for_batch<F>(
    batch: usize,
    available: u64,
    mut requests_for: F,
) -> Result<Plan, RuntimeError>
where
    F: FnMut(usize) -> Result<Vec<BufferRequest>, RuntimeError>,
{
    let p = plan(&requests_for(batch)?)?;
    if p.peak_bytes <= available {
        return Ok(p);
    }
    let largest_batch =
        match largest_batch_that_fits(batch.saturating_sub(1), available, &mut requests_for) {
            Ok((b, _)) if b < batch => Some(b),
            _ => None,
        };
    Err(RuntimeError::OutOfMemory {
        needed: p.peak_bytes,
        available,
        largest_batch,
        batch: Some(batch),
    })
}

/// Parses the `frugal arena --buffers` text format: one buffer per line,
/// `name category bytes first last [align]`, whitespace-separated; `#` starts a
/// comment; blank lines are skipped. Byte counts may use the suffixes K, M, G
/// (powers of 1024), e.g. `64M`.
///
/// # Errors
/// `BadRequest` naming the line number and what is wrong.
pub fn parse_buffers(text: &str) -> Result<Vec<BufferRequest>, RuntimeError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |reason: String| RuntimeError::BadRequest {
            name: format!("line {}", i + 1),
            reason,
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 5 && f.len() != 6 {
            return Err(at(format!(
                "expected 'name category bytes first last [align]', got {} field(s): '{line}'",
                f.len()
            )));
        }
        let category = Category::parse(f[1]).ok_or_else(|| {
            at(format!(
                "unknown category '{}' (one of: {})",
                f[1],
                Category::ALL.map(|c| c.as_str()).join(", ")
            ))
        })?;
        let bytes = parse_bytes(f[2])
            .ok_or_else(|| at(format!("bytes '{}' is not a size like 4096 or 64M", f[2])))?;
        let first = f[3]
            .parse::<u32>()
            .map_err(|e| at(format!("first use '{}': {e}", f[3])))?;
        let last = f[4]
            .parse::<u32>()
            .map_err(|e| at(format!("last use '{}': {e}", f[4])))?;
        let align = match f.get(5) {
            Some(a) => parse_bytes(a).ok_or_else(|| at(format!("align '{a}' is not a number")))?,
            None => ARENA_ALIGN,
        };
        out.push(BufferRequest {
            name: f[0].to_string(),
            category,
            bytes,
            align,
            first_use: first,
            last_use: last,
        });
    }
    Ok(out)
}

fn parse_bytes(s: &str) -> Option<u64> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_lifetimes_share_and_overlapping_do_not() {
        let reqs = vec![
            BufferRequest::new("a", Category::Activations, 1000, 0, 1),
            BufferRequest::new("b", Category::Activations, 1000, 2, 3),
            BufferRequest::new("c", Category::Workspace, 500, 1, 2),
        ];
        let p = plan(&reqs).unwrap();
        assert_eq!(p.get("a").unwrap().offset, p.get("b").unwrap().offset);
        let c = p.get("c").unwrap();
        assert!(
            c.offset >= 1000,
            "c overlaps a and b in time, so it must sit above them"
        );
        assert_eq!(p.max_live_bytes, 1500);
        assert_eq!(
            p.breakdown.iter().map(|u| u.at_peak).sum::<u64>() + p.fragmentation,
            p.peak_bytes
        );
    }

    /// No two buffers live at the same time share a byte, offsets are aligned.
    fn assert_sound(reqs: &[BufferRequest], p: &Plan) {
        let mut by_time: Vec<&PlacedBuffer> = p.buffers.iter().collect();
        by_time.sort_by_key(|b| b.request.first_use);
        for (i, a) in by_time.iter().enumerate() {
            assert_eq!(a.offset % ARENA_ALIGN, 0, "{a:?}");
            assert!(a.end() <= p.peak_bytes);
            for b in &by_time[i + 1..] {
                if b.request.first_use > a.request.last_use {
                    break;
                }
                let apart = a.end() <= b.offset || b.end() <= a.offset;
                assert!(
                    apart || a.request.bytes == 0 || b.request.bytes == 0,
                    "{a:?} {b:?}"
                );
            }
        }
        assert_eq!(p.buffers.len(), reqs.len());
    }

    /// A step of `layers` layers as the device program lays it out: state for the whole
    /// schedule, saved activations from a layer's forward to its backward, transients.
    fn layered(layers: u32) -> Vec<BufferRequest> {
        let end = 4 * layers + 2;
        let mut r = vec![BufferRequest::new(
            "state",
            Category::Params,
            10_000,
            0,
            end,
        )];
        for l in 0..layers {
            let (fwd, bwd) = (2 * l + 1, end - 1 - 2 * l);
            for (k, bytes) in [3000u64, 1000, 1000, 512].into_iter().enumerate() {
                r.push(BufferRequest::new(
                    format!("layer{l}.saved{k}"),
                    Category::Activations,
                    bytes,
                    fwd,
                    bwd,
                ));
            }
            r.push(BufferRequest::new(
                format!("layer{l}.fwd"),
                Category::Workspace,
                2000,
                fwd,
                fwd + 1,
            ));
            r.push(BufferRequest::new(
                format!("layer{l}.bwd"),
                Category::Workspace,
                4000,
                bwd - 1,
                bwd,
            ));
        }
        r
    }

    #[test]
    fn long_lists_are_planned_in_schedule_order_soundly_and_fast() {
        let small = layered(40);
        let greedy = plan(&small).unwrap();
        assert_ne!(greedy.rule, PlacementRule::ScheduleOrder);
        // The schedule-order rule on the same list: sound, and close to the greedy plan.
        let aligns = vec![ARENA_ALIGN; small.len()];
        let offsets = place_in_schedule_order(&small, &aligns);
        let replay = Plan {
            buffers: small
                .iter()
                .zip(&offsets)
                .map(|(r, &offset)| PlacedBuffer {
                    request: r.clone(),
                    offset,
                })
                .collect(),
            peak_bytes: peak_of(&small, &offsets),
            ..greedy.clone()
        };
        assert_sound(&small, &replay);
        assert!(replay.peak_bytes <= greedy.peak_bytes + greedy.peak_bytes / 10);

        let layers = (GREEDY_MAX_BUFFERS / 6 + 1000) as u32;
        let long = layered(layers);
        let started = std::time::Instant::now();
        let p = plan(&long).unwrap();
        assert!(
            started.elapsed().as_secs_f64() < 5.0,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(p.rule, PlacementRule::ScheduleOrder);
        assert_sound(&long, &p);
        assert!(p.peak_bytes >= p.max_live_bytes);
        // Every layer's saved activations (5512 bytes, 4 aligned buffers: 6400) stack once.
        let stacked = 10_240 + u64::from(layers) * 6400 + 4096;
        assert!(p.peak_bytes <= stacked, "{} > {stacked}", p.peak_bytes);
        assert!(p.breakdown_table().contains("schedule-order"));
    }

    #[test]
    fn labels_rename_categories_in_the_breakdown() {
        let p = plan(&[
            BufferRequest::new("m", Category::OptimizerMoments, 1000, 0, 1),
            BufferRequest::new("w", Category::Params, 1000, 0, 1),
        ])
        .unwrap()
        .labelled(vec![(
            Category::OptimizerMoments,
            "moments (shard 1/8)".into(),
        )]);
        let t = p.breakdown_table();
        assert!(t.contains("moments (shard 1/8)  "), "{t}");
        assert!(t.lines().any(|l| l.starts_with("params ")), "{t}");
        assert_eq!(p.label(Category::Params), "params");
    }

    #[test]
    fn bad_requests_are_errors() {
        let mut r = BufferRequest::new("x", Category::Params, 10, 3, 2);
        assert!(plan(std::slice::from_ref(&r))
            .unwrap_err()
            .to_string()
            .contains("first use 3 is after last use 2"));
        r.first_use = 0;
        r.align = 3;
        assert!(plan(&[r]).unwrap_err().to_string().contains("power of two"));
        let d = BufferRequest::new("d", Category::Params, 10, 0, 0);
        assert!(plan(&[d.clone(), d])
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn buffers_file_format() {
        let text = "# name category bytes first last [align]\nwte params 64M 0 9\n\nact0 act 4K 1 2 1024 # comment\n";
        let reqs = parse_buffers(text).unwrap();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].bytes, 64 << 20);
        assert_eq!(reqs[1].category, Category::Activations);
        assert_eq!(reqs[1].align, 1024);
        let e = parse_buffers("x nonsense 1 0 0").unwrap_err().to_string();
        assert!(
            e.contains("line 1") && e.contains("unknown category"),
            "{e}"
        );
        assert!(parse_buffers("x params 1 0")
            .unwrap_err()
            .to_string()
            .contains("4 field(s)"));
    }

    #[test]
    fn batch_search_names_the_largest_batch() {
        // Memory linear in batch: 1 MiB fixed plus 1 MiB per sample.
        let reqs = |b: usize| {
            Ok(vec![
                BufferRequest::new("w", Category::Params, 1 << 20, 0, 10),
                BufferRequest::new("act", Category::Activations, (b as u64) << 20, 1, 5),
            ])
        };
        let available = 10 << 20;
        let (b, p) = largest_batch_that_fits(64, available, reqs).unwrap();
        assert_eq!(b, 9);
        assert!(p.peak_bytes <= available);
        let e = plan_for_batch(16, available, reqs).unwrap_err();
        match &e {
            RuntimeError::OutOfMemory {
                largest_batch,
                batch,
                needed,
                ..
            } => {
                assert_eq!(
                    (*largest_batch, *batch, *needed),
                    (Some(9), Some(16), 17 << 20)
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            e.to_string().contains("the largest batch that fits is 9"),
            "{e}"
        );
        assert!(matches!(
            largest_batch_that_fits(64, 1 << 20, reqs),
            Err(RuntimeError::OutOfMemory {
                largest_batch: None,
                batch: Some(1),
                ..
            })
        ));
    }
}
