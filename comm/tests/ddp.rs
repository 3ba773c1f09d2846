//! The sync engine over the socket ring, ranks as threads: all-reduce and
//! reduce-scatter buckets give each element the bits of the ring's order
//! around its owner whatever ranges backward hands over, gathers copy the
//! owner's bits, misuse is reported, and a dead peer is named.

mod common;

use common::{data, free_port};
use frugal_comm::{
    ring_order_sum_in, CommError, Communicator, Ddp, Reduce, Rendezvous, Shards, SocketComm,
    SocketOptions,
};
use std::ops::Range;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A fake model's tensors: embedding, 3 layers of two tensors, final norm, head.
const SIZES: [usize; 9] = [1000, 300, 301, 300, 301, 300, 301, 17, 999];

fn tensors() -> Vec<Range<usize>> {
    let mut at = 0;
    SIZES
        .iter()
        .map(|&s| {
            let r = at..at + s;
            at += s;
            r
        })
        .collect()
}

fn n_params() -> usize {
    SIZES.iter().sum()
}

/// How backward hands the gradients over.
#[derive(Debug, Clone, Copy, PartialEq)]
enum HandOver {
    /// Each tensor, top down.
    PerTensor,
    /// Head + norm, then each layer, then the embedding.
    PerLayer,
    /// The whole vector at once.
    OneBig,
    /// Every other tensor; the rest is taken by finish.
    Some,
    /// Nothing: finish does everything.
    None,
}

const HAND_OVERS: [HandOver; 5] = [
    HandOver::PerTensor,
    HandOver::PerLayer,
    HandOver::OneBig,
    HandOver::Some,
    HandOver::None,
];

/// The ranges `how` hands over, in order.
fn hand_over(how: HandOver) -> Vec<Range<usize>> {
    let t = tensors();
    let n = n_params();
    match how {
        HandOver::PerTensor => t.into_iter().rev().collect(),
        HandOver::PerLayer => vec![
            t[7].start..n,
            t[5].start..t[6].end,
            t[3].start..t[4].end,
            t[1].start..t[2].end,
            t[0].clone(),
        ],
        HandOver::OneBig => std::iter::once(0..n).collect(),
        HandOver::Some => t.into_iter().rev().step_by(2).collect(),
        HandOver::None => Vec::new(),
    }
}

/// Shards whose boundaries fall inside tensors (align 7: no tensor boundary is
/// a multiple of 7 within the vector).
fn shards(world: usize) -> Shards {
    let s = Shards::new(n_params(), world, 7);
    let tensor_ends: Vec<usize> = tensors().iter().map(|r| r.end).collect();
    for b in &s.bounds()[1..world] {
        assert!(
            !tensor_ends.contains(b),
            "shard boundary {b} on a tensor boundary"
        );
    }
    s
}

fn grads_of(step: usize, rank: usize) -> Vec<f32> {
    data((step * 10 + rank) as u64, n_params())
}

/// The average every element must have, bit for bit: the ring's sum starting
/// at the element's owner + 1, then one f32 division.
fn expected(world: usize, step: usize) -> Vec<f32> {
    let inputs: Vec<Vec<f32>> = (0..world).map(|r| grads_of(step, r)).collect();
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    let s = shards(world);
    (0..n_params())
        .map(|i| ring_order_sum_in(&refs, s.bounds(), i) / world as f32)
        .collect()
}

fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Runs `f(rank, comm)` on `world` loopback ranks (small ring slices, so that
/// buckets go as many frames).
fn with_ranks<T: Send + 'static>(
    world: usize,
    f: impl Fn(usize, Box<dyn Communicator>) -> Result<T, CommError> + Send + Sync + Clone + 'static,
) -> Vec<Result<T, CommError>> {
    let port = free_port();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let f = f.clone();
            std::thread::spawn(move || {
                let rv = Rendezvous::loopback(rank, world, port, "ddp", TIMEOUT);
                let options = SocketOptions {
                    slice_bytes: 1024,
                    ..SocketOptions::default()
                };
                f(rank, Box::new(SocketComm::connect(&rv, options)?))
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank thread panicked"))
        .collect()
}

/// One rank's results: per mode, per hand-over, per step, what it got
/// (all-reduce: the whole vector; reduce-scatter: its shard), with the stats.
type Outcome = Vec<(Reduce, HandOver, usize, Vec<f32>, frugal_comm::CommStats)>;

const STEPS: usize = 2;
/// 500-element buckets: they straddle tensors and shards.
const BUCKET_BYTES: usize = 2000;

fn run_modes(rank: usize, mut comm: Box<dyn Communicator>) -> Result<Outcome, CommError> {
    let world = comm.world();
    let mut out = Vec::new();
    for reduce in [Reduce::AllReduce, Reduce::ReduceScatter] {
        let mut ddp = Ddp::with_shards(comm, shards(world), BUCKET_BYTES, reduce)?;
        let shard = ddp.shards().range(rank);
        for how in HAND_OVERS {
            for step in 0..STEPS {
                let mut grads = grads_of(step, rank);
                for r in hand_over(how) {
                    ddp.on_ready_values(r.clone(), &grads[r])?;
                }
                let (got, stats) = match reduce {
                    Reduce::AllReduce => {
                        let stats = ddp.finish(&mut grads)?;
                        (grads, stats)
                    }
                    Reduce::ReduceScatter => {
                        let mut mine = vec![f32::NAN; shard.len()];
                        // Everything handed over: no vector needed for the gaps.
                        let gaps: &[f32] = if how == HandOver::OneBig { &[] } else { &grads };
                        let stats = ddp.finish_shard(gaps, &mut mine)?;
                        (mine, stats)
                    }
                };
                out.push((reduce, how, step, got, stats));
            }
        }
        comm = ddp.into_comm()?;
    }
    Ok(out)
}

#[test]
fn both_modes_give_the_owners_ring_order_bits_whatever_the_hand_over() {
    for world in [2, 3, 4] {
        let results = with_ranks(world, run_modes);
        let want: Vec<Vec<f32>> = (0..STEPS).map(|s| expected(world, s)).collect();
        let s = shards(world);
        let n_buckets = n_params().div_ceil(BUCKET_BYTES / 4);
        // Per mode: the bytes all ranks sent in one step, summed.
        let mut sent_total = [0usize; 2];
        for (rank, r) in results.into_iter().enumerate() {
            let outcome = r.expect("rank");
            assert_eq!(outcome.len(), 2 * HAND_OVERS.len() * STEPS);
            for (reduce, how, step, got, stats) in outcome {
                let what = format!("world {world} rank {rank} {reduce:?} {how:?} step {step}");
                match reduce {
                    Reduce::AllReduce => assert!(bits_equal(&got, &want[step]), "{what}"),
                    Reduce::ReduceScatter => {
                        assert!(bits_equal(&got, &want[step][s.range(rank)]), "{what}")
                    }
                }
                assert_eq!(stats.buckets, n_buckets, "{what}");
                assert_eq!(stats.bytes, n_params() * 4, "{what}");
                if how == HandOver::PerTensor && step == 0 {
                    sent_total[usize::from(reduce == Reduce::ReduceScatter)] += stats.sent_bytes;
                }
            }
        }
        // A ring reduce-scatter sends each bucket (world − 1) times over, the
        // all-reduce twice that.
        let bytes = n_params() * 4;
        assert_eq!(sent_total[1], (world - 1) * bytes, "world {world}");
        assert_eq!(sent_total[0], 2 * (world - 1) * bytes, "world {world}");
    }
}

#[test]
fn buckets_are_cut_once_from_the_top() {
    let rv = Rendezvous::single();
    let comm = SocketComm::connect(&rv, SocketOptions::default()).expect("single");
    let ddp = Ddp::new(Box::new(comm), 10, 16).expect("ddp");
    assert_eq!(ddp.bucket_ranges(), vec![6..10, 2..6, 0..2]);
    assert_eq!(ddp.reduce(), Reduce::AllReduce);
    assert_eq!(ddp.shards(), &Shards::new(10, 1, 1));
}

#[test]
fn gathers_return_the_owners_bits_in_flight_together_and_among_buckets() {
    for world in [2, 3, 4] {
        let results = with_ranks(world, move |rank, comm| {
            let s = shards(world);
            let n = n_params();
            // Each rank's own idea of the parameters: only its shard is right.
            let params = data(1000 + rank as u64, n);
            let mut ddp = Ddp::with_shards(comm, s.clone(), BUCKET_BYTES, Reduce::ReduceScatter)?;
            let own = |r: &Range<usize>| {
                let lo = r.start.max(s.range(rank).start);
                let hi = r.end.min(s.range(rank).end).max(lo);
                lo..hi
            };
            // Ranges across shard boundaries, inside one shard, empty, everything.
            let ranges = [0..n, 5..n - 3, 1000..1300, n - 17..n, 40..40, 7..14];
            let mut got = Vec::new();
            for step in 0..2 {
                // Prefetch two, hand over gradients, gather more, finish, then redeem.
                let mut tickets = Vec::new();
                for r in &ranges[..2] {
                    tickets.push(ddp.start_gather(r.clone(), &params[own(r)])?);
                }
                let grads = grads_of(step, rank);
                ddp.on_ready_values(2000..n, &grads[2000..n])?;
                for r in &ranges[2..] {
                    tickets.push(ddp.start_gather(r.clone(), &params[own(r)])?);
                }
                let mut mine = vec![0.0; s.range(rank).len()];
                let stats = ddp.finish_shard(&grads, &mut mine)?;
                assert_eq!(stats.gathers, ranges.len());
                // Redeemed in reverse order, into one reused vector.
                let mut out = Vec::new();
                let mut step_got = Vec::new();
                for t in tickets.into_iter().rev() {
                    let range = t.range();
                    ddp.wait_gather(t, &mut out)?;
                    step_got.push((range, out.clone()));
                }
                got.push((step_got, stats.sent_bytes));
            }
            Ok(got)
        });
        let s = shards(world);
        let owners: Vec<Vec<f32>> = (0..world)
            .map(|r| data(1000 + r as u64, n_params()))
            .collect();
        let mut sent = [0usize; 2];
        for (rank, r) in results.into_iter().enumerate() {
            for (step, (step_got, sent_bytes)) in r.expect("rank").into_iter().enumerate() {
                sent[step] += sent_bytes;
                assert_eq!(step_got.len(), 6);
                for (range, values) in step_got {
                    let want: Vec<f32> = range.clone().map(|i| owners[s.owner(i)][i]).collect();
                    assert!(
                        bits_equal(&values, &want),
                        "world {world} rank {rank} gather {range:?}"
                    );
                }
            }
        }
        // The ring sends every bucket and every gathered range (world − 1) times over.
        let gathered = n_params() + (n_params() - 8) + 300 + 17 + 7;
        let each_step = (world - 1) * 4 * (n_params() + gathered);
        assert_eq!(sent, [each_step; 2], "world {world}");
    }
}

/// bf16 gathers (a GPU's weights) travel at two bytes an element, in the same
/// queue as f32 gathers and buckets, and bring every element its owner's bits
/// (NaN payloads and -0.0 included); a ticket redeemed at the other width is
/// refused, naming the call to use.
#[test]
fn bf16_gathers_carry_the_owners_bits_at_two_bytes_an_element() {
    use half::bf16;
    for world in [2, 3] {
        let results = with_ranks(world, move |rank, comm| {
            let s = shards(world);
            let n = n_params();
            // Each rank's own idea of the weights, with odd bit patterns in it.
            let weights: Vec<bf16> = data(2000 + rank as u64, n)
                .iter()
                .enumerate()
                .map(|(i, v)| match i % 97 {
                    0 => bf16::from_bits(0x7fc1 + rank as u16),
                    1 => bf16::from_bits(0x8000),
                    _ => bf16::from_f32(*v),
                })
                .collect();
            let mut ddp = Ddp::with_shards(comm, s.clone(), BUCKET_BYTES, Reduce::ReduceScatter)?;
            let own = |r: &Range<usize>| {
                let lo = r.start.max(s.range(rank).start);
                lo..r.end.min(s.range(rank).end).max(lo)
            };
            let ranges = [0..n, 3..n - 5, 1200..1201];
            let mut tickets = Vec::new();
            for r in &ranges {
                tickets.push(ddp.start_gather_bf16(r.clone(), &weights[own(r)])?);
            }
            let grads = grads_of(0, rank);
            let mut mine = vec![0.0; s.range(rank).len()];
            let stats = ddp.finish_shard(&grads, &mut mine)?;
            let mut got = Vec::new();
            let mut out = Vec::new();
            for t in tickets {
                let range = t.range();
                ddp.wait_gather_bf16(t, &mut out)?;
                got.push((range, out.clone()));
            }
            // The other width is refused (the engine stays usable).
            let t = ddp.start_gather_bf16(0..10, &weights[own(&(0..10))])?;
            let refused = ddp
                .wait_gather(t, &mut Vec::new())
                .err()
                .map(|e| e.to_string());
            Ok((got, stats.sent_bytes, refused))
        });
        let s = shards(world);
        let grad_bytes = n_params() * 4;
        let gathered: usize = [n_params(), n_params() - 8, 1].iter().sum();
        let mut sent = 0;
        for (rank, r) in results.into_iter().enumerate() {
            let (got, sent_bytes, refused) = r.expect("rank");
            sent += sent_bytes;
            for (range, values) in got {
                for (i, v) in range.clone().zip(&values) {
                    let owner = s.owner(i);
                    let want = match i % 97 {
                        0 => 0x7fc1 + owner as u16,
                        1 => 0x8000,
                        _ => bf16::from_f32(data(2000 + owner as u64, n_params())[i]).to_bits(),
                    };
                    assert_eq!(v.to_bits(), want, "world {world} rank {rank} element {i}");
                }
            }
            let refused = refused.unwrap_or_default();
            assert!(refused.contains("wait_gather_bf16"), "{refused}");
        }
        // Over all ranks the ring sends the reduce-scatter's gradients and each
        // gathered range (world − 1) times: bf16 at 2 bytes an element.
        assert_eq!(
            sent,
            (world - 1) * (grad_bytes + 2 * gathered),
            "world {world}"
        );
    }
}

#[test]
fn a_gather_no_peer_answers_times_out_naming_it() {
    let port = free_port();
    let n = 1000;
    // Rank 1 joins, then neither gathers nor leaves for a while.
    let idle = std::thread::spawn(move || {
        let rv = Rendezvous::loopback(1, 2, port, "ddp", TIMEOUT);
        let comm = SocketComm::connect(&rv, SocketOptions::default())?;
        std::thread::sleep(Duration::from_millis(1500));
        drop(comm);
        Ok::<_, CommError>(())
    });
    let rv = Rendezvous::loopback(0, 2, port, "ddp", TIMEOUT);
    let comm = SocketComm::connect(&rv, SocketOptions::default()).expect("connect");
    let mut ddp = Ddp::with_shards(
        Box::new(comm),
        Shards::new(n, 2, 1),
        4096,
        Reduce::ReduceScatter,
    )
    .expect("ddp");
    ddp.set_timeout(Duration::from_millis(300));
    let t = Instant::now();
    let ticket = ddp.start_gather(0..n, &vec![1.0; 500]).expect("queued");
    let e = ddp
        .wait_gather(ticket, &mut Vec::new())
        .expect_err("nobody answers")
        .to_string();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(
        e.contains("gather of parameters 0..1000") && e.contains("0.3 s"),
        "{e}"
    );
    let e = ddp
        .start_gather(0..n, &vec![1.0; 500])
        .expect_err("a timed-out engine stays broken");
    assert!(e.to_string().contains("failed earlier"), "{e}");
    idle.join().expect("thread").expect("rank 1");
}

#[test]
fn norm_partials_are_gathered_in_rank_order() {
    let counts = [3usize, 0, 2];
    let results = with_ranks(3, move |rank, comm| {
        let mut ddp = Ddp::new(comm, 4, 1024)?;
        let mine: Vec<f64> = (0..counts[rank])
            .map(|i| rank as f64 * 10.0 + i as f64 + 0.1)
            .collect();
        let all = ddp.all_gather_now_f64(&mine, &counts)?;
        let wrong = ddp.all_gather_now_f64(&mine, &counts[..2]).err();
        Ok((all, wrong.map(|e| e.to_string())))
    });
    for r in results {
        let (all, wrong) = r.expect("rank");
        assert_eq!(all, vec![0.1, 1.1, 2.1, 20.1, 21.1]);
        assert!(
            wrong.as_ref().is_some_and(|e| e.contains("2 counts")),
            "{wrong:?}"
        );
    }
}

#[test]
fn bytes_are_gathered_from_their_owners_and_misuse_is_refused() {
    // Uneven chunks, one empty, odd lengths: bf16 shards are 2 bytes per
    // element but nothing here assumes it.
    let bounds = [0usize, 7, 7, 20];
    let results = with_ranks(3, move |rank, comm| {
        let mut ddp = Ddp::new(comm, 40, 64)?;
        let mut data = vec![0xEEu8; 20];
        for (i, b) in data[bounds[rank]..bounds[rank + 1]].iter_mut().enumerate() {
            *b = (rank * 50 + i) as u8;
        }
        ddp.all_gather_bytes_now(&mut data, &bounds)?;
        let short = ddp.all_gather_bytes_now(&mut data, &bounds[..3]).err();
        let past = ddp.all_gather_bytes_now(&mut data, &[0, 7, 7, 21]).err();
        // Mid-step it is refused, like every collective the caller waits for.
        ddp.on_ready_values(0..4, &[1.0; 4])?;
        let mid = ddp.all_gather_bytes_now(&mut data, &bounds).err();
        let mut grads = vec![1.0f32; 40];
        ddp.finish(&mut grads)?;
        // And the engine still works afterwards.
        let mut again = vec![rank as u8; 20];
        ddp.all_gather_bytes_now(&mut again, &bounds)?;
        let errors = [short, past, mid].map(|e| e.map(|e| e.to_string()));
        Ok((data, again, errors))
    });
    let mut expected: Vec<u8> = (0..7).collect();
    expected.extend((0..13).map(|i| 100 + i));
    for r in results {
        let (data, again, [short, past, mid]) = r.expect("rank");
        assert_eq!(data, expected);
        let mut owners = vec![0u8; 7];
        owners.extend([2u8; 13]);
        assert_eq!(again, owners);
        assert!(
            short.as_ref().is_some_and(|e| e.contains("need 4 offsets")),
            "{short:?}"
        );
        assert!(
            past.as_ref().is_some_and(|e| e.contains("from 0 to 20")),
            "{past:?}"
        );
        assert!(
            mid.as_ref().is_some_and(|e| e.contains("middle of a step")),
            "{mid:?}"
        );
    }
}

#[test]
fn misuse_is_reported_and_the_next_step_works() {
    let rv = Rendezvous::single();
    let comm = SocketComm::connect(&rv, SocketOptions::default()).expect("single");
    let mut ddp = Ddp::new(Box::new(comm), 10, 16).expect("ddp");
    let mut g = vec![1.0f32; 10];
    ddp.on_ready(&g, 0..6).expect("first");
    let e = ddp.on_ready(&g, 4..10).expect_err("overlap");
    assert!(e.to_string().contains("marked ready twice"), "{e}");
    let e = ddp.all_reduce_now(&mut [1.0]).expect_err("mid-step");
    assert!(e.to_string().contains("middle of a step"), "{e}");
    let e = ddp
        .finish(&mut g)
        .expect_err("the overlap is reported by finish too");
    assert!(e.to_string().contains("4..10"), "{e}");
    let e = ddp.on_ready(&g, 5..11).expect_err("out of range");
    assert!(e.to_string().contains("5..11"), "{e}");
    let e = ddp
        .finish_shard(&[], &mut [0.0; 10])
        .expect_err("nothing handed over and no gradients");
    assert!(e.to_string().contains("never handed over"), "{e}");
    // Nothing is broken: a whole step goes through.
    ddp.on_ready(&g, 3..10).expect("ready");
    g[0] = 4.0;
    ddp.finish(&mut g).expect("finish");
    assert_eq!(g[0], 4.0);
    let comm = ddp.into_comm().expect("comm");
    let mut rs = Ddp::with_shards(comm, Shards::new(10, 1, 1), 16, Reduce::ReduceScatter)
        .expect("reduce-scatter engine");
    let e = rs.finish(&mut g).expect_err("finish needs the all-reduce");
    assert!(e.to_string().contains("finish_shard"), "{e}");
    let e = rs.start_gather(0..10, &[0.0; 3]).expect_err("wrong length");
    assert!(e.to_string().contains("owns 10"), "{e}");
    let comm = rs.into_comm().expect("comm");
    let e = Ddp::with_shards(comm, Shards::new(10, 2, 1), 16, Reduce::AllReduce)
        .err()
        .map(|e| e.to_string());
    assert!(e.is_some_and(|e| e.contains("made for 2 ranks")));
}

#[test]
fn broadcast_params_and_all_reduce_now() {
    let results = with_ranks(3, |rank, comm| {
        let mut ddp = Ddp::new(comm, 4, 1024)?;
        let mut params = data(rank as u64 + 100, 4);
        ddp.broadcast_params(&mut params)?;
        let mut loss = [rank as f32];
        ddp.all_reduce_now(&mut loss)?;
        let comm = ddp.into_comm()?;
        assert_eq!(comm.rank(), rank);
        Ok((params, loss[0]))
    });
    for r in results {
        let (params, loss) = r.expect("ddp");
        assert_eq!(params, data(100, 4));
        assert_eq!(loss, 3.0);
    }
}

#[test]
fn a_failed_peer_surfaces_in_finish() {
    let port = free_port();
    let n = 100_000;
    let quitter = std::thread::spawn(move || {
        let rv = Rendezvous::loopback(1, 2, port, "ddp", TIMEOUT);
        SocketComm::connect(&rv, SocketOptions::default()).map(drop)
    });
    let rv = Rendezvous::loopback(0, 2, port, "ddp", TIMEOUT);
    let comm = SocketComm::connect(&rv, SocketOptions::default()).expect("connect");
    quitter
        .join()
        .expect("thread")
        .expect("rank 1 connects, then leaves");
    let mut ddp = Ddp::new(Box::new(comm), n, 4096).expect("ddp");
    let mut g = vec![1.0f32; n];
    ddp.on_ready(&g, 0..n).expect("queued");
    let e = ddp.finish(&mut g).expect_err("rank 1 is gone");
    assert!(e.to_string().contains("rank 1"), "{e}");
    assert!(ddp.finish(&mut g).is_err(), "a broken DDP stays broken");
}

/// Three ranks; rank 2 takes part in `before` and then dies (its engine and
/// communicator dropped); ranks 0 and 1 then run `after`, which must fail
/// naming rank 2, well within the communicator's timeout.
fn dies_during(
    before: fn(&mut Ddp, usize) -> Result<(), CommError>,
    after: fn(&mut Ddp, usize) -> Result<(), CommError>,
) {
    let results = with_ranks(3, move |rank, comm| {
        let mut ddp = Ddp::with_shards(comm, shards(3), BUCKET_BYTES, Reduce::ReduceScatter)?;
        before(&mut ddp, rank)?;
        if rank == 2 {
            drop(ddp);
            return Ok(None);
        }
        let t = Instant::now();
        let e = after(&mut ddp, rank).err().map(|e| e.to_string());
        Ok(Some((e, t.elapsed())))
    });
    for (rank, r) in results.into_iter().enumerate().take(2) {
        let (e, took) = r.expect("rank").expect("a survivor's outcome");
        let e = e.unwrap_or_else(|| panic!("rank {rank} did not notice rank 2 dying"));
        assert!(e.contains("rank 2"), "rank {rank}: {e}");
        assert!(took < TIMEOUT, "rank {rank} took {took:?}");
    }
}

#[test]
fn a_peer_dying_in_a_reduce_scatter_bucket_is_named() {
    // Every rank hands over the top buckets (reduced together); the survivors
    // then need the rest, which rank 2 never sends.
    dies_during(
        |ddp, rank| {
            let g = grads_of(0, rank);
            ddp.on_ready_values(3000..n_params(), &g[3000..])
        },
        |ddp, rank| {
            let g = grads_of(0, rank);
            let mut mine = vec![0.0; ddp.shards().range(rank).len()];
            ddp.finish_shard(&g, &mut mine).map(drop)
        },
    );
}

#[test]
fn a_peer_dying_before_a_gather_is_named() {
    dies_during(
        |_, _| Ok(()),
        |ddp, rank| {
            let s = ddp.shards().clone();
            let mine = vec![1.0; s.range(rank).len()];
            let t = ddp.start_gather(0..n_params(), &mine)?;
            let mut out = Vec::new();
            ddp.wait_gather(t, &mut out)
        },
    );
}
