//! The communication thread: it owns the communicator and runs the jobs the
//! main thread sends, one at a time, in the order they were sent. Every rank
//! sends the same jobs in the same order, so the collectives match up.
//! Buffers travel with the jobs and come back with the replies: nothing is
//! shared between the threads.

use super::Reduce;
use crate::error::CommError;
use crate::ops::Communicator;
use half::bf16;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) enum Job {
    /// Reduce gradient bucket `index` over its chunks.
    Bucket {
        index: usize,
        buf: Vec<f32>,
        reduce: Reduce,
    },
    /// Gather a parameter range: chunk `c` of `bounds` (elements) from rank `c`.
    Gather {
        ticket: u64,
        buf: GatherBuf,
        bounds: Vec<usize>,
    },
    /// A collective the caller waits for right away.
    Plain(PlainJob),
}

pub(super) enum PlainJob {
    /// Rank 0's values everywhere.
    Broadcast(Vec<f32>),
    /// The sum, even chunks (scalars such as the loss).
    AllReduce(Vec<f32>),
    /// Chunk `c` of `byte_bounds` from rank `c`, bit for bit.
    GatherF64 {
        buf: Vec<f64>,
        byte_bounds: Vec<usize>,
    },
    /// Chunk `c` of `bounds` (bytes) from rank `c`, bit for bit (bf16 weights).
    GatherBytes { buf: Vec<u8>, bounds: Vec<usize> },
}

/// A parameter gather's values: f32 (the CPU's weights) or bf16 (a GPU's),
/// each sent at its own width.
pub(super) enum GatherBuf {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
}

impl GatherBuf {
    fn is_empty(&self) -> bool {
        match self {
            GatherBuf::F32(b) => b.is_empty(),
            GatherBuf::Bf16(b) => b.is_empty(),
        }
    }
}

/// A plain job's buffer, back.
pub(super) enum Plain {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<u8>),
}

pub(super) enum Reply {
    Bucket {
        index: usize,
        buf: Vec<f32>,
        took: Duration,
        result: Result<(), CommError>,
    },
    Gather {
        ticket: u64,
        buf: GatherBuf,
        took: Duration,
        result: Result<(), CommError>,
    },
    Plain {
        buf: Plain,
        result: Result<(), CommError>,
    },
}

/// Runs jobs until the main thread closes the channel (or stops listening),
/// then hands the communicator back. `bucket_bounds[b]` are bucket `b`'s chunks.
pub(super) fn run(
    mut comm: Box<dyn Communicator>,
    bucket_bounds: Arc<Vec<Vec<usize>>>,
    jobs: mpsc::Receiver<Job>,
    replies: mpsc::Sender<Reply>,
) -> Box<dyn Communicator> {
    while let Ok(job) = jobs.recv() {
        let reply = match job {
            Job::Bucket {
                index,
                mut buf,
                reduce,
            } => {
                let t = Instant::now();
                let result = match bucket_bounds.get(index) {
                    Some(bounds) => match reduce {
                        Reduce::AllReduce => comm.all_reduce_sum_f32_in(&mut buf, bounds),
                        Reduce::ReduceScatter => comm.reduce_scatter_sum_f32_in(&mut buf, bounds),
                    },
                    None => Err(CommError::CommThread {
                        rank: comm.rank(),
                        reason: format!("asked for bucket {index} of {}", bucket_bounds.len()),
                    }),
                };
                Reply::Bucket {
                    index,
                    buf,
                    took: t.elapsed(),
                    result,
                }
            }
            Job::Gather {
                ticket,
                mut buf,
                bounds,
            } => {
                let t = Instant::now();
                // Every rank gathers the same range: all skip an empty one.
                let empty = buf.is_empty();
                let result = match &mut buf {
                    _ if empty => Ok(()),
                    GatherBuf::F32(b) => comm.all_gather_f32_in(b, &bounds),
                    GatherBuf::Bf16(b) => {
                        let bytes: Vec<usize> = bounds.iter().map(|e| e * 2).collect();
                        comm.all_gather_bytes_in(bytemuck::cast_slice_mut(b), &bytes)
                    }
                };
                Reply::Gather {
                    ticket,
                    buf,
                    took: t.elapsed(),
                    result,
                }
            }
            Job::Plain(PlainJob::Broadcast(mut buf)) => {
                let result = comm.broadcast_f32(&mut buf, 0);
                Reply::Plain {
                    buf: Plain::F32(buf),
                    result,
                }
            }
            Job::Plain(PlainJob::AllReduce(mut buf)) => {
                let result = comm.all_reduce_sum_f32(&mut buf);
                Reply::Plain {
                    buf: Plain::F32(buf),
                    result,
                }
            }
            Job::Plain(PlainJob::GatherF64 {
                mut buf,
                byte_bounds,
            }) => {
                let result = if buf.is_empty() {
                    Ok(())
                } else {
                    comm.all_gather_bytes_in(bytemuck::cast_slice_mut(&mut buf), &byte_bounds)
                };
                Reply::Plain {
                    buf: Plain::F64(buf),
                    result,
                }
            }
            Job::Plain(PlainJob::GatherBytes { mut buf, bounds }) => {
                let result = if buf.is_empty() {
                    Ok(())
                } else {
                    comm.all_gather_bytes_in(&mut buf, &bounds)
                };
                Reply::Plain {
                    buf: Plain::Bytes(buf),
                    result,
                }
            }
        };
        if replies.send(reply).is_err() {
            break;
        }
    }
    comm
}
