//! Where a one-waypoint update of a ~1 MiB plan costs the leader time,
//! from `ms_publish` to the request handed to a worker, step by step:
//! `cargo test --release --lib -- leader_path --ignored --nocapture`.
//!
//! The plan is row 13's (examples/bench: tests/common/plan.rs, 991 KiB,
//! one waypoint moved). Each step is timed warm (the same step over and
//! over, the states in the cache) and cold (8 MiB written between two
//! runs, as the other work between updates at 20 a second does); medians.

#[path = "../../tests/common/plan.rs"]
mod plan;

use crate::session::backoff::Backoff;
use crate::session::publisher::{Mailbox, Next, Publisher, Request, Stored};
use crate::wire::{delta, protocol};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The median of `n` runs of `f`, each after `prepare` (not timed).
fn median(n: usize, mut prepare: impl FnMut(), mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            prepare();
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

#[test]
#[ignore]
fn leader_path_of_a_moved_waypoint_of_991_kib() {
    let mut p = plan::Plan::of_size(1 << 20, 13);
    let s0 = p.text();
    p.move_waypoint(37 * 5, 0.00001, 0.00001);
    let s1 = p.text();
    let (b0, b1) = (s0.as_bytes(), s1.as_bytes());
    let pre = delta::common_prefix(b0, b1);
    let suf = delta::common_suffix(&b0[pre..], &b1[pre..]);
    println!(
        "{} bytes -> {} bytes, edit at {pre}, {} bytes kept at the end, delta {:?}",
        s0.len(),
        s1.len(),
        suf,
        delta::create(&s0, &s1)
    );
    let sums0 = delta::Sums::of(b0);
    let mut junk = vec![0u8; 8 << 20];
    let mut k = 0u8;
    let mut evict = || {
        k = k.wrapping_add(1);
        junk.iter_mut().step_by(64).for_each(|b| *b = k);
        black_box(&junk);
    };
    // A publisher whose stored base is s0; each run sends s1 as a delta,
    // then stores it and goes back (the next run sends s0 against s1).
    let token = "0123456789abcdef".to_string();
    let mut publisher = Publisher::new(
        Instant::now(),
        1,
        token.clone(),
        true,
        Backoff::with_seed(1),
    );
    let mut mb = Mailbox::default();
    let mut seq = 1;
    let mut store =
        |publisher: &mut Publisher, mb: &mut Mailbox, state: &str| -> Option<Duration> {
            mb.published += 1;
            mb.pending = Some((mb.published, state.to_owned()));
            let t = Instant::now();
            let next = publisher.poll(mb, Instant::now(), Duration::from_secs(5));
            let Next::Publish(unsent) = next else {
                panic!("{next:?}")
            };
            let request = publisher.request(unsent);
            let took = t.elapsed();
            let had_delta = matches!(&request, Request::Publish { delta: Some(_), .. });
            seq += 1;
            let id = format!("{token}{:016x}", mb.published);
            publisher.done(mb, request, Ok(Stored { seq, id }), Instant::now(), false);
            had_delta.then_some(took)
        };
    assert!(
        store(&mut publisher, &mut mb, &s0).is_none(),
        "the first in full"
    );
    let n = 101;
    let mut states = [&s1, &s0].into_iter().cycle();
    type Step<'a> = (&'a str, Box<dyn FnMut() + 'a>);
    let steps: Vec<Step> = vec![
        (
            "argument checks alone (check_state: UTF-8, then NUL)",
            Box::new(|| {
                black_box(protocol::check_state(black_box(b1)).unwrap());
            }),
        ),
        (
            "  of which UTF-8",
            Box::new(|| {
                black_box(std::str::from_utf8(black_box(b1)).unwrap());
            }),
        ),
        (
            "  of which NUL search",
            Box::new(|| {
                black_box(black_box(b1).contains(&0));
            }),
        ),
        (
            "the checks and the copy in one pass (check_state_owned)",
            Box::new(|| {
                black_box(protocol::check_state_owned(black_box(b1)).unwrap());
            }),
        ),
        (
            "the copy alone (Lead::publish made it before)",
            Box::new(|| {
                black_box(black_box(&s1).to_owned());
            }),
        ),
        (
            "delta::create (create_within, the publisher's limit)",
            Box::new(|| {
                black_box(delta::create_within(&s0, &s1, s1.len() / 2 - 1).unwrap());
            }),
        ),
        (
            "  of which common prefix + suffix",
            Box::new(|| {
                let p = delta::common_prefix(black_box(b0), black_box(b1));
                black_box(delta::common_suffix(&b0[p..], &b1[p..]));
            }),
        ),
        (
            "  of which the full checksum of the new state",
            Box::new(|| {
                black_box(delta::checksum(black_box(b1)));
            }),
        ),
        (
            "delta::create_summed (the checksum from the base's sums)",
            Box::new(|| {
                black_box(delta::create_summed(&s0, sums0, &s1, s1.len() / 2 - 1).unwrap());
            }),
        ),
        (
            "  of which the new state's sums from the edit",
            Box::new(|| {
                black_box(sums0.edited(b0, pre, b0.len() - suf, &b1[pre..b1.len() - suf]));
            }),
        ),
    ];
    println!(
        "{:<58} {:>10} {:>10}",
        "step (991 KiB, one waypoint)", "warm", "cold"
    );
    for (what, mut f) in steps {
        let warm = median(n, || {}, &mut f);
        let cold = median(n, &mut evict, &mut f);
        println!("{what:<58} {warm:>10.1?} {cold:>10.1?}");
    }
    // The publisher's whole step on the network thread: the mailbox's
    // state taken, the delta made, the request built.
    let mut warm = Vec::new();
    let mut cold = Vec::new();
    for i in 0..2 * n {
        let state = states.next().unwrap();
        if i % 2 == 1 {
            evict();
        }
        let took = store(&mut publisher, &mut mb, state).expect("a delta");
        if i % 2 == 1 { &mut cold } else { &mut warm }.push(took);
    }
    warm.sort();
    cold.sort();
    println!(
        "{:<58} {:>10.1?} {:>10.1?}",
        "Publisher::poll (delta request of a stored base)",
        warm[n / 2],
        cold[n / 2]
    );
}
