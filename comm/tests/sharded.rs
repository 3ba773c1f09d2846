//! The collectives over explicit chunks (`*_in`: what sharded data
//! parallelism calls, chunk `c` = a bucket's part of rank `c`'s shard), ranks
//! as threads on loopback, at 2, 3 and 4 ranks, with random lengths and
//! random chunk bounds (empty chunks, boundaries at no round number):
//! all-reduce, reduce-scatter and all-gather give the serial ring-order
//! reference ([`ring_order_sum_in`]) bit for bit over TCP, over Unix sockets
//! (one lane and two) and through shared memory, so every transport gives
//! the same bits. Bad bounds are refused on every transport.

mod common;

use common::{data, with_ranks};
use frugal_comm::{ring_order_sum_in, CommError, Communicator, SameHost, SocketOptions};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A tiny deterministic generator (xorshift64*), so every rank and the
/// reference draw the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `world + 1` bounds over `len`: random cuts, some chunks forced empty.
fn random_bounds(rng: &mut Rng, len: usize, world: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..world - 1).map(|_| rng.below(len + 1)).collect();
    // One case in three puts two cuts together (an empty chunk in the middle),
    // one in four puts a cut at an end (an empty first or last chunk).
    if world > 2 && rng.below(3) == 0 {
        cuts[1] = cuts[0];
    }
    if rng.below(4) == 0 {
        cuts[0] = if rng.below(2) == 0 { 0 } else { len };
    }
    cuts.sort_unstable();
    let mut b = vec![0];
    b.extend(cuts);
    b.push(len);
    b
}

/// One case: a length and its chunks (elements, for the f32 collectives).
#[derive(Debug, Clone)]
struct Case {
    len: usize,
    bounds: Vec<usize>,
}

/// The cases of one world size: random lengths up to a few slots of the
/// 4 KiB test segment (so calls go in many pieces), an empty buffer, one
/// element, every element in one chunk, and one buffer large enough for two
/// ring lanes (over 2 MiB).
fn cases(world: usize, seed: u64) -> Vec<Case> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = Vec::new();
    for i in 0..12 {
        let len = match i {
            0 => 0,
            1 => 1,
            2..=5 => 2 + rng.below(60),
            _ => 500 + rng.below(20_000),
        };
        out.push(Case {
            len,
            bounds: random_bounds(&mut rng, len, world),
        });
    }
    let len = 9_001;
    let mut one_owner = vec![0; world + 1];
    for b in one_owner.iter_mut().skip(world - 1) {
        *b = len;
    }
    out.push(Case {
        len,
        bounds: one_owner,
    });
    let len = (3 << 20) / 4 + 17;
    out.push(Case {
        len,
        bounds: random_bounds(&mut rng, len, world),
    });
    out
}

/// An all-gather's bytes: every f32 bit pattern matters, NaN payloads and
/// -0.0 among them (a conversion anywhere would change them).
fn gather_input(rank: usize, len: usize) -> Vec<u8> {
    let specials = [
        f32::from_bits(0x7fc0_1234), // quiet NaN with a payload
        f32::from_bits(0xffa0_0001), // signalling NaN, negative
        -0.0,
        f32::INFINITY,
        f32::from_bits(1), // the smallest subnormal
    ];
    let mut v: Vec<u8> = data(rank as u64 + 100, len.div_ceil(4))
        .into_iter()
        .enumerate()
        .flat_map(|(i, x)| {
            let x = if i % 7 == 3 {
                specials[i % specials.len()]
            } else {
                x
            };
            x.to_bits().to_le_bytes()
        })
        .collect();
    v.truncate(len);
    v
}

/// What one rank got from the three collectives of one case.
struct Got {
    all_reduce: Vec<f32>,
    reduce_scatter: Vec<f32>,
    gathered: Vec<u8>,
}

/// Runs every case of `world` ranks over `options`, each rank calling all
/// three collectives per case; returns per rank per case what it got.
fn run(world: usize, options: SocketOptions, seed: u64) -> Vec<Vec<Got>> {
    let want_shm = options.same_host == SameHost::SharedMemory;
    let results: Vec<Result<Vec<Got>, CommError>> =
        with_ranks(world, options, TIMEOUT, move |rank, comm| {
            assert_eq!(comm.uses_shared_memory(), want_shm, "rank {rank}");
            let mut out = Vec::new();
            for case in cases(world, seed) {
                let mut ar = data(rank as u64 + 1, case.len);
                comm.all_reduce_sum_f32_in(&mut ar, &case.bounds)?;
                let mut rs = data(rank as u64 + 1, case.len);
                comm.reduce_scatter_sum_f32_in(&mut rs, &case.bounds)?;
                // All-gather in bytes with byte bounds that are not multiples of 4:
                // each element bound times 3, plus the rank-independent odd tail.
                let bytes = case.len * 3 + 1;
                let mut byte_bounds: Vec<usize> = case.bounds.iter().map(|b| b * 3).collect();
                byte_bounds[world] = bytes;
                let mut g = gather_input(rank, bytes);
                comm.all_gather_bytes_in(&mut g, &byte_bounds)?;
                out.push(Got {
                    all_reduce: ar,
                    reduce_scatter: rs,
                    gathered: g,
                });
            }
            Ok::<_, CommError>(out)
        })
        .into_iter()
        .map(|r| r.expect("connect"))
        .collect();
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(errors.is_empty(), "world {world}, {options:?}: {errors:#?}");
    results.into_iter().flatten().collect()
}

/// Checks every rank's results against the serial references.
fn check(world: usize, got: &[Vec<Got>], seed: u64, label: &str) {
    for (k, case) in cases(world, seed).iter().enumerate() {
        let inputs: Vec<Vec<f32>> = (0..world).map(|r| data(r as u64 + 1, case.len)).collect();
        let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let want: Vec<u32> = (0..case.len)
            .map(|i| ring_order_sum_in(&refs, &case.bounds, i).to_bits())
            .collect();
        let bytes = case.len * 3 + 1;
        let mut byte_bounds: Vec<usize> = case.bounds.iter().map(|b| b * 3).collect();
        byte_bounds[world] = bytes;
        let gather_inputs: Vec<Vec<u8>> = (0..world).map(|r| gather_input(r, bytes)).collect();
        let gathered: Vec<u8> = (0..world)
            .flat_map(|c| gather_inputs[c][byte_bounds[c]..byte_bounds[c + 1]].to_vec())
            .collect();
        let what = |rank: usize| format!("{label}, world {world}, case {k} {case:?}, rank {rank}");
        for (rank, per_case) in got.iter().enumerate() {
            let g = &per_case[k];
            let ar: Vec<u32> = g.all_reduce.iter().map(|v| v.to_bits()).collect();
            if let Some(i) = (0..case.len).find(|&i| ar[i] != want[i]) {
                panic!("{}: all-reduce element {i}", what(rank));
            }
            let own = case.bounds[rank]..case.bounds[rank + 1];
            if let Some(i) = own
                .clone()
                .find(|&i| g.reduce_scatter[i].to_bits() != want[i])
            {
                panic!("{}: reduce-scatter element {i} of {own:?}", what(rank));
            }
            if let Some(i) = (0..bytes).find(|&i| g.gathered[i] != gathered[i]) {
                panic!("{}: all-gather byte {i} of {byte_bounds:?}", what(rank));
            }
        }
    }
}

fn shm() -> SocketOptions {
    SocketOptions {
        same_host: SameHost::SharedMemory,
        // 1024 elements per slot: most cases go in many pieces.
        shm_slot_bytes: 4096,
        ..SocketOptions::default()
    }
}

fn ring(kind: SameHost, lanes: usize) -> SocketOptions {
    SocketOptions {
        same_host: kind,
        lanes,
        // Several frames per chunk even for the smaller cases.
        slice_bytes: 4096,
        ..SocketOptions::default()
    }
}

#[test]
fn shared_memory_gives_the_ring_order_sum_for_any_chunks() {
    for world in [2, 3, 4] {
        let got = run(world, shm(), 11);
        check(world, &got, 11, "shared memory");
    }
}

#[test]
fn socket_rings_give_the_ring_order_sum_for_any_chunks() {
    for world in [2, 3, 4] {
        for (label, options) in [
            ("tcp", ring(SameHost::Tcp, 1)),
            ("unix, 2 lanes", ring(SameHost::UnixSocket, 2)),
        ] {
            let got = run(world, options, 11);
            check(world, &got, 11, label);
        }
    }
}

/// Both checks above compare with one reference; here the transports are
/// compared with each other directly, on other random cases.
#[test]
fn shared_memory_and_the_ring_give_the_same_bits() {
    for world in [2, 3, 4] {
        let a = run(world, shm(), 29);
        let b = run(world, ring(SameHost::UnixSocket, 1), 29);
        for (rank, (x, y)) in a.iter().zip(&b).enumerate() {
            for (k, (p, q)) in x.iter().zip(y).enumerate() {
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&p.all_reduce),
                    bits(&q.all_reduce),
                    "world {world}, rank {rank}, case {k}"
                );
                assert_eq!(
                    p.gathered, q.gathered,
                    "world {world}, rank {rank}, case {k}"
                );
                let own = cases(world, 29)[k].bounds.clone();
                let own = own[rank]..own[rank + 1];
                assert_eq!(
                    bits(&p.reduce_scatter[own.clone()]),
                    bits(&q.reduce_scatter[own]),
                    "world {world}, rank {rank}, case {k}"
                );
            }
        }
    }
}

/// The even-split calls go through the same code: reduce-scatter and
/// all-gather by shared memory give the ring's bits.
#[test]
fn even_split_reduce_scatter_and_all_gather_through_shared_memory() {
    let len = 10_007;
    for world in [2, 3, 4] {
        let per_transport: Vec<Vec<(Vec<u32>, Vec<u32>)>> = [shm(), ring(SameHost::UnixSocket, 1)]
            .into_iter()
            .map(|options| {
                with_ranks(world, options, TIMEOUT, move |rank, comm| {
                    let mut x = data(rank as u64 + 1, len);
                    let mine = comm.reduce_scatter_sum_f32(&mut x)?;
                    assert_eq!(mine, frugal_comm::chunk_range(len, world, rank));
                    let mut y = vec![f32::NAN; len];
                    y[mine.clone()].copy_from_slice(&x[mine]);
                    comm.all_gather_f32(&mut y)?;
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    Ok::<_, CommError>((bits(&x), bits(&y)))
                })
                .into_iter()
                .map(|r| r.expect("connect").expect("collectives"))
                .collect()
            })
            .collect();
        let inputs: Vec<Vec<f32>> = (0..world).map(|r| data(r as u64 + 1, len)).collect();
        let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let want: Vec<u32> = (0..len)
            .map(|i| frugal_comm::ring_order_sum(&refs, i).to_bits())
            .collect();
        for (t, ranks) in per_transport.iter().enumerate() {
            for (rank, (_, gathered)) in ranks.iter().enumerate() {
                assert_eq!(gathered, &want, "transport {t}, world {world}, rank {rank}");
            }
        }
    }
}

/// Bounds that do not split the buffer into `world` chunks are refused before
/// anything is sent, with an error saying so, and the communicator stays usable.
#[test]
fn bad_bounds_are_refused_on_every_transport() {
    for options in [shm(), ring(SameHost::UnixSocket, 1), ring(SameHost::Tcp, 1)] {
        let results = with_ranks(3, options, TIMEOUT, |rank, comm| {
            let mut x = vec![1.0f32; 10];
            let mut b = vec![0u8; 10];
            let bad: [&[usize]; 4] = [
                &[0, 5, 10],    // too few chunks
                &[0, 6, 4, 10], // decreasing
                &[0, 3, 6, 9],  // does not end at the length
                &[1, 3, 6, 10], // does not start at 0
            ];
            let mut errors = Vec::new();
            for bounds in bad {
                errors.push(comm.all_reduce_sum_f32_in(&mut x, bounds).err());
                errors.push(comm.reduce_scatter_sum_f32_in(&mut x, bounds).err());
                errors.push(comm.all_gather_bytes_in(&mut b, bounds).err());
            }
            // Still usable: nothing was sent.
            comm.all_reduce_sum_f32_in(&mut x, &[0, 3, 3, 10])?;
            assert!(x.iter().all(|&v| v == 3.0), "rank {rank}: {x:?}");
            Ok::<_, CommError>(errors)
        });
        for (rank, r) in results.into_iter().enumerate() {
            for e in r
                .expect("connect")
                .expect("the good call after the bad ones")
            {
                let e = e.expect("bad bounds must be refused");
                let text = e.to_string();
                assert!(matches!(e, CommError::InvalidArgument { .. }), "{text}");
                assert!(
                    text.contains(&format!("rank {rank}:")) && text.contains("chunk bounds"),
                    "{:?}: {text}",
                    options.same_host
                );
            }
        }
    }
}

/// Ranks that pass different (each valid) bounds, or call different
/// collectives, through shared memory all fail at once naming the odd rank
/// instead of waiting out the timeout or summing garbage.
#[test]
fn ranks_that_disagree_through_shared_memory_all_fail_at_once() {
    for odd_call in [false, true] {
        let started = std::time::Instant::now();
        let results = with_ranks(3, shm(), Duration::from_secs(20), move |rank, comm| {
            let mut x = vec![1.0f32; 100];
            if rank == 1 && odd_call {
                comm.all_gather_f32_in(&mut x, &[0, 10, 20, 100])
            } else if rank == 1 {
                comm.reduce_scatter_sum_f32_in(&mut x, &[0, 10, 21, 100])
            } else {
                comm.reduce_scatter_sum_f32_in(&mut x, &[0, 10, 20, 100])
            }
        });
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        for (rank, r) in results.into_iter().enumerate() {
            let e = r.expect("connect").expect_err("the ranks disagree");
            let text = e.to_string();
            assert!(
                !matches!(e, CommError::Timeout { .. }),
                "rank {rank}: {text}"
            );
            assert!(text.contains(&format!("rank {rank}:")), "{text}");
            // Ranks 0 and 2 name rank 1; rank 1 names the first that differs from it (0).
            let odd = if rank == 1 { 0 } else { 1 };
            assert!(
                text.contains(&format!("rank {odd} ")),
                "rank {rank}: {text}"
            );
            let says = if odd_call { "called" } else { "chunk bounds" };
            assert!(text.contains(says), "rank {rank}: {text}");
        }
    }
}
