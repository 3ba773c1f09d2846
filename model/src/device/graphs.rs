//! The step's fixed launches as graphs (`--cuda-graphs`): each maximal run of fixed-launch
//! operations (between the operations that need the host: the batch upload, the
//! cross-entropy, the embedding backward, a gradient hand-over, a weight gather or await,
//! and the ends of the forward-only and training passes) is captured once per model, that
//! is once per shape, and replayed with one launch. A model with L layers runs about
//! 2L + 6 graph launches per micro-batch instead of ~25 launches per layer each way.
//!
//! What stays outside the graphs, launched as before: the cross-entropy (its `num_valid`
//! and `grad_scale` change per micro-batch and are baked into its parameters), the
//! embedding backward (its distinct-token count is its grid), and the optimizer (it reads
//! the gradient norm back to the host to skip a non-finite update). The batch's tokens go
//! into the same arena buffers before each replay (a synchronous copy on the compute
//! stream, so it is ordered after the previous replay's reads).
//!
//! Each run of launches is first run plainly (the warm-up: CUDA loads the functions and
//! sets their attributes outside a capture), captured the second time and replayed from
//! then on; capture runs nothing, so the captured pass is replayed at once. On `emu` the
//! same happens with the emulator's launch list, so a capture bug shows here as a wrong
//! bit.

use std::ops::Range;
use std::str::FromStr;

use frugal_runtime::device::{Backend, Device};
use frugal_runtime::graph::Graph;
use frugal_runtime::RuntimeError;

/// `--cuda-graphs`: whether the step's fixed launches are captured and replayed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GraphMode {
    /// Plain launches.
    Off,
    /// Capture and replay on any GPU backend (also `emu`, for testing); a capture that
    /// fails is an error.
    On,
    /// The default: on for `cuda` while capture works (a failure is logged with its reason
    /// and the step goes on with plain launches); off on `emu`, where graphs save nothing.
    #[default]
    Auto,
}

impl GraphMode {
    /// "off", "on" or "auto".
    pub fn as_str(self) -> &'static str {
        match self {
            GraphMode::Off => "off",
            GraphMode::On => "on",
            GraphMode::Auto => "auto",
        }
    }
}

impl FromStr for GraphMode {
    type Err = String;
    fn from_str(s: &str) -> Result<GraphMode, String> {
        match s {
            "off" => Ok(GraphMode::Off),
            "on" => Ok(GraphMode::On),
            "auto" => Ok(GraphMode::Auto),
            other => Err(format!(
                "--cuda-graphs '{other}' is not one of off, on, auto"
            )),
        }
    }
}

/// One run of fixed-launch steps and its graph.
struct Segment {
    steps: Range<usize>,
    warmed: bool,
    graph: Option<Graph>,
}

/// The segments of a step list and their graphs.
#[derive(Default)]
pub(super) struct StepGraphs {
    /// Whether replay is in use now (`Auto` turns it off after a failed capture).
    enabled: bool,
    /// `On`: a capture failure is an error.
    required: bool,
    /// Segment index by the step index it starts at.
    starts: Vec<Option<usize>>,
    segments: Vec<Segment>,
}

/// What [`StepGraphs::run`] did with the segment starting at a step.
pub(super) enum SegmentRun {
    /// Not a segment start, graphs are off, or the segment's first (warm-up) run: run the
    /// step plainly.
    Plain,
    /// The steps up to (not including) this index were run by a graph.
    Replayed(usize),
}

impl StepGraphs {
    /// Segments over `fixed` (per step: is it a run of fixed launches), split at
    /// `boundaries` (the ends of the passes), for `mode` on `device`.
    pub(super) fn new(
        mode: GraphMode,
        device: &Device,
        fixed: &[bool],
        boundaries: &[usize],
    ) -> Self {
        let enabled = match mode {
            GraphMode::Off => false,
            GraphMode::On => device.backend() != Backend::Cpu,
            GraphMode::Auto => device.backend() == Backend::Cuda,
        };
        let mut starts = vec![None; fixed.len()];
        let mut segments = Vec::new();
        let mut i = 0;
        while i < fixed.len() {
            if !fixed[i] {
                i += 1;
                continue;
            }
            let mut end = i + 1;
            while end < fixed.len() && fixed[end] && !boundaries.contains(&end) {
                end += 1;
            }
            starts[i] = Some(segments.len());
            segments.push(Segment {
                steps: i..end,
                warmed: false,
                graph: None,
            });
            i = end;
        }
        StepGraphs {
            enabled,
            required: mode == GraphMode::On,
            starts,
            segments,
        }
    }

    /// True while steps are replayed from graphs.
    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Graphs captured so far.
    pub(super) fn captured(&self) -> usize {
        self.segments.iter().filter(|s| s.graph.is_some()).count()
    }

    /// For the step at `at` in a run that ends at `limit`: replays its segment's graph
    /// (capturing it first, with `launch_plain` queuing the segment's launches, on the
    /// second visit), or says to run it plainly.
    ///
    /// # Errors
    /// Capture failures under [`GraphMode::On`]; replay failures.
    pub(super) fn run(
        &mut self,
        device: &Device,
        at: usize,
        limit: usize,
        launch_plain: &mut dyn FnMut(Range<usize>) -> Result<(), RuntimeError>,
    ) -> Result<SegmentRun, RuntimeError> {
        let Some(Some(index)) = self.starts.get(at).copied().filter(|_| self.enabled) else {
            return Ok(SegmentRun::Plain);
        };
        let seg = &mut self.segments[index];
        if seg.steps.end > limit {
            return Ok(SegmentRun::Plain);
        }
        if !seg.warmed {
            seg.warmed = true;
            return Ok(SegmentRun::Plain);
        }
        if seg.graph.is_none() {
            match capture(device, seg.steps.clone(), launch_plain) {
                Ok(g) => seg.graph = Some(g),
                Err(e) if !self.required => {
                    log::warn!(
                        "--cuda-graphs auto: capturing the step failed ({e}); using plain \
                         launches from now on"
                    );
                    self.enabled = false;
                    for s in &mut self.segments {
                        s.graph = None;
                    }
                    return Ok(SegmentRun::Plain);
                }
                Err(e) => return Err(e),
            }
        }
        let end = seg.steps.end;
        if let Some(g) = &seg.graph {
            device.launch_graph(g)?;
        }
        Ok(SegmentRun::Replayed(end))
    }
}

/// Captures `launch_plain(steps)` into a graph; the capture is ended whatever happens.
fn capture(
    device: &Device,
    steps: Range<usize>,
    launch_plain: &mut dyn FnMut(Range<usize>) -> Result<(), RuntimeError>,
) -> Result<Graph, RuntimeError> {
    device.begin_capture()?;
    let queued = launch_plain(steps);
    let graph = device.end_capture();
    queued?;
    graph
}
