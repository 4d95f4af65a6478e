//! Replies and acknowledgements that cannot be taken at their word:
//! a reply meant for another request (Webdis 0.1.9 writes the reply to an
//! abandoned request into the connection that reused its socket), leader
//! presence across reconnects and while Webdis is frozen, and a
//! subscription Webdis acknowledges but never feeds.

mod common;

use common::faults::{FaultRelay, Faults, HoldReply, Landing};
use common::*;
use missionstream::{Client, EventKind};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);

fn count(ev: &[Rec], stream: &str, kind: EventKind) -> usize {
    ev.iter()
        .filter(|e| e.stream == stream && e.kind == kind)
        .count()
}

/// Waits until `f` holds for the events so far; `None` after `timeout`
/// (for a test that explains the failure itself).
fn wait_for(rec: &Recorder, timeout: Duration, f: impl Fn(&[Rec]) -> bool) -> Option<Events> {
    let deadline = Instant::now() + timeout;
    loop {
        let ev = rec.snapshot();
        if f(&ev) {
            return Some(ev);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for the `n`th event of `kind`.
fn wait_nth(rec: &Recorder, stream: &str, kind: EventKind, n: usize, timeout: Duration) {
    rec.wait(timeout, |ev| count(ev, stream, kind) >= n);
}

/// The LEADER_OFFLINE / LEADER_ONLINE events of a stream, in order.
fn presence(ev: &[Rec], stream: &str) -> Vec<EventKind> {
    ev.iter()
        .filter(|e| {
            e.stream == stream
                && matches!(
                    e.kind,
                    EventKind::MS_EVENT_LEADER_OFFLINE | EventKind::MS_EVENT_LEADER_ONLINE
                )
        })
        .map(|e| e.kind)
        .collect()
}

/// `n` presence events strictly alternating, OFFLINE first.
fn alternating(n: usize) -> Vec<EventKind> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                EventKind::MS_EVENT_LEADER_OFFLINE
            } else {
                EventKind::MS_EVENT_LEADER_ONLINE
            }
        })
        .collect()
}

fn kinds(ev: &[Rec], stream: &str) -> Vec<EventKind> {
    ev.iter()
        .filter(|e| e.stream == stream)
        .map(|e| e.kind)
        .collect()
}

/// The first reply to an ms_publish is held past the client's wait for it
/// (a third of the timeout) and, once the client has abandoned that
/// connection, written into another one (`landing`) ahead of that
/// connection's own reply. From then on, every ms_publish reaches Webdis
/// 1 s late: a flush that returns Ok on a reply meant for another request
/// returns before its state is stored, which the record in Redis shows.
fn stale_publish_reply(landing: Landing, prefix: &str) {
    let s = Servers::start();
    let relay = FaultRelay::start(
        s.webdis_port,
        Faults {
            hold_reply: Some(HoldReply {
                pattern: "/FCALL/ms_publish/",
                nth: 1,
                landing,
                max_hold: Duration::from_secs(10),
                later_delay: Duration::from_secs(1),
            }),
            ..Faults::default()
        },
    );
    let leader = Client::new(&relay.url).unwrap();
    // One try waits 2 s: a publish the relay holds back 1 s still fits.
    leader.set_timeout(6000).unwrap();
    let leader_rec = Recorder::attach(&leader);
    let name = unique(prefix);
    leader.start(&name, "pw", "code").unwrap();
    for k in 1..=3u64 {
        let state = format!("{{\"v\":{k}}}");
        leader.publish(&name, state.as_bytes()).unwrap();
        let t0 = Instant::now();
        if let Err(e) = leader.flush(&name, 20_000) {
            panic!("flush of {state} failed after {:?}: {e:?}", t0.elapsed());
        }
        let took = t0.elapsed();
        let seq: u64 = s.record_field(&name, "seq").parse().unwrap();
        let stored = s.record_field(&name, "state");
        assert!(
            seq >= k,
            "flush of {state} returned Ok after {took:?}, but Redis holds seq {seq}, \
             state {stored}: the flush took a reply meant for another request"
        );
        assert_eq!(
            (seq, stored.as_str()),
            (k, state.as_str()),
            "after the flush of {state}: stored more than once?"
        );
    }
    assert_eq!(
        (relay.stale_written(), relay.late_written()),
        (1, 0),
        "the held reply was written into another connection, once"
    );
    assert!(relay.delayed() >= 2, "later publishes were held back");
    // Any request the relay still holds back lands by now: each state was
    // stored exactly once.
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(s.record_field(&name, "seq"), "3");
    assert_state_eq(&s.record_field(&name, "state"), "{\"v\":3}", "");
    assert!(
        leader_rec.snapshot().is_empty(),
        "a recovered fault reports nothing: {:?}",
        leader_rec.snapshot()
    );
}

/// Shape a: the reply to an abandoned publish lands in the next new
/// connection, ahead of the response to its first request (the retry of
/// that very publish), whose own reply then waits unread on the pooled
/// connection for the next request to take.
#[test]
fn a_reply_delayed_past_the_timeout_is_not_taken_for_the_answer_of_a_new_connection() {
    stale_publish_reply(Landing::NewConnection, "stale-new");
}

/// Shape b: the reply to an abandoned publish lands in a kept-alive
/// connection, ahead of the response to the next publish sent on it.
#[test]
fn a_reply_for_an_abandoned_request_on_a_reused_connection_is_not_taken_for_the_next_answer() {
    stale_publish_reply(Landing::ReusedConnection, "stale-reused");
}

/// Kills Webdis and starts it again; waits for the follower to lose its
/// subscription and to get it back (the `round`th time).
fn restart_webdis(s: &mut Servers, rec: &Recorder, name: &str, round: usize) {
    s.stop_webdis();
    wait_nth(rec, name, EventKind::MS_EVENT_CONNECTION_LOST, round, T);
    s.start_webdis();
    wait_nth(rec, name, EventKind::MS_EVENT_RECONNECTED, round, T);
}

/// Issue 8 item 3: a follower that reported LEADER_OFFLINE reports
/// LEADER_ONLINE when the leader is heard again, whatever reconnects
/// happened in between; OFFLINE and ONLINE strictly alternate. Round 1:
/// the leader stays away well past the reconnect (no second OFFLINE), then
/// comes back. Round 2: the leader comes back right after the reconnect
/// (ONLINE, though the new subscription never heard it go).
#[test]
fn leader_presence_survives_reconnects_offline_and_online_alternate() {
    const HB: u32 = 300;
    let hb = Duration::from_millis(HB as u64);
    let mut s = Servers::start();
    let name = unique("presence-reconnect");
    let lead = |s: &Servers, start: bool| {
        let l = s.client();
        l.set_heartbeat(HB).unwrap();
        if start {
            l.start(&name, "pw", "code").unwrap();
        } else {
            l.reconnect(&name, "pw", "code").unwrap();
        }
        l
    };
    let leader = lead(&s, true);
    let follower = s.client();
    follower.set_timeout(1000).unwrap();
    let rec = Recorder::attach(&follower);
    follower.connect(&name, "pw").unwrap();
    leader.publish(&name, b"{\"v\":1}").unwrap();
    rec.wait_state(&name, "{\"v\":1}", T);

    // Round 1.
    drop(leader);
    wait_nth(&rec, &name, EventKind::MS_EVENT_LEADER_OFFLINE, 1, T);
    restart_webdis(&mut s, &rec, &name, 1);
    // Five intervals without the leader on the new subscription: it is
    // still the one absence, already reported.
    std::thread::sleep(5 * hb);
    let ev = rec.snapshot();
    assert_eq!(
        presence(&ev, &name),
        alternating(1),
        "the leader, still away after a reconnect, was reported offline again: {:?}",
        kinds(&ev, &name)
    );
    let leader = lead(&s, false);
    leader.publish(&name, b"{\"v\":2}").unwrap();
    rec.wait_state(&name, "{\"v\":2}", T);
    let ev = wait_for(&rec, Duration::from_secs(3), |ev| {
        count(ev, &name, EventKind::MS_EVENT_LEADER_ONLINE) >= 1
    })
    .unwrap_or_else(|| {
        panic!(
            "the leader was heard again, but no LEADER_ONLINE: {:?}",
            kinds(&rec.snapshot(), &name)
        )
    });
    assert_eq!(
        presence(&ev, &name),
        alternating(2),
        "{:?}",
        kinds(&ev, &name)
    );

    // Round 2.
    drop(leader);
    wait_nth(&rec, &name, EventKind::MS_EVENT_LEADER_OFFLINE, 2, T);
    restart_webdis(&mut s, &rec, &name, 2);
    let leader = lead(&s, false);
    leader.publish(&name, b"{\"v\":3}").unwrap();
    rec.wait_state(&name, "{\"v\":3}", T);
    let ev = wait_for(&rec, Duration::from_secs(3), |ev| {
        count(ev, &name, EventKind::MS_EVENT_LEADER_ONLINE) >= 2
    })
    .unwrap_or_else(|| {
        panic!(
            "the leader came back right after the reconnect, but no LEADER_ONLINE: {:?}",
            kinds(&rec.snapshot(), &name)
        )
    });
    assert_eq!(
        presence(&ev, &name),
        alternating(4),
        "{:?}",
        kinds(&ev, &name)
    );
    // The leader's heartbeats keep it online.
    std::thread::sleep(5 * hb);
    let ev = rec.snapshot();
    assert_eq!(
        presence(&ev, &name),
        alternating(4),
        "{:?}",
        kinds(&ev, &name)
    );
    let states = rec.states(&name);
    assert_increasing(&states);
    assert_states_from(
        &states,
        &[
            (0, "{}"),
            (1, "{\"v\":1}"),
            (2, "{\"v\":2}"),
            (3, "{\"v\":3}"),
        ],
    );
    assert_eq!(count(&ev, &name, EventKind::MS_EVENT_ENDED), 0);
}

/// Issue 8 item 4: with Webdis frozen (SIGSTOP), nothing reaches the
/// follower, and its probe of the silent subscription cannot be answered:
/// LEADER_OFFLINE must still come on time (3 intervals after the last
/// message, plus a little), while Webdis is frozen. Thawed, the leader is
/// heard again: LEADER_ONLINE, and the state published meanwhile arrives.
///
/// The last message before the freeze is a heartbeat (one every 0.5 s),
/// received at most 0.5 s before the freeze and not after it: OFFLINE is
/// due 1.0 to 1.5 s after the freeze; 2.3 s is the bound.
#[test]
fn leader_offline_is_reported_on_time_while_webdis_is_frozen() {
    let s = Servers::start();
    let name = unique("frozen-presence");
    let leader = s.client();
    leader.set_heartbeat(500).unwrap();
    // Requests blocked by the 4 s freeze are waited for, not abandoned.
    leader.set_timeout(15_000).unwrap();
    leader.start(&name, "pw", "code").unwrap();
    let follower = s.client();
    follower.set_timeout(15_000).unwrap();
    let rec = Recorder::attach(&follower);
    follower.connect(&name, "pw").unwrap();
    leader.publish(&name, b"{\"v\":1}").unwrap();
    rec.wait_state(&name, "{\"v\":1}", T);
    // Heartbeats flow: the leader is online.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(presence(&rec.snapshot(), &name), vec![]);
    // The last word of the leader before the freeze is a state (which the
    // subscription's reader delivers itself): the presence clock runs
    // from its arrival.
    leader.publish(&name, b"{\"v\":\"1b\"}").unwrap();
    rec.wait_state(&name, "{\"v\":\"1b\"}", T);
    let last_heard = Instant::now();
    s.signal_webdis("STOP");
    let frozen = Instant::now();
    let thaw_at = frozen + Duration::from_secs(4);
    let offline = |ev: &[Rec]| count(ev, &name, EventKind::MS_EVENT_LEADER_OFFLINE) >= 1;
    let offline_at = wait_for(&rec, thaw_at - Instant::now(), offline).map(|_| Instant::now());
    // Published while frozen: stored and delivered after the thaw.
    leader.publish(&name, b"{\"v\":2}").unwrap();
    std::thread::sleep(thaw_at.saturating_duration_since(Instant::now()));
    s.signal_webdis("CONT");
    let thawed = Instant::now();
    let Some(offline_at) = offline_at else {
        let late = wait_for(&rec, Duration::from_secs(5), offline).map(|_| Instant::now());
        panic!(
            "no LEADER_OFFLINE while Webdis was frozen for 4 s (heartbeat 0.5 s: due at most \
             1.5 s after the freeze); it came {}: {:?}",
            match late {
                Some(t) => format!(
                    "{:?} after the freeze, {:?} after the thaw",
                    t - frozen,
                    t - thawed
                ),
                None => "not even 5 s after the thaw".to_string(),
            },
            kinds(&rec.snapshot(), &name)
        );
    };
    assert_took(
        offline_at - last_heard,
        Duration::from_millis(1400),
        Duration::from_millis(2300),
        "LEADER_OFFLINE after the last state before the freeze (due at 1.5 s)",
    );
    let ev = rec.wait(T, |ev| {
        count(ev, &name, EventKind::MS_EVENT_LEADER_ONLINE) >= 1
            && ev.iter().any(|e| e.state.as_deref() == Some("{\"v\":2}"))
    });
    let p = presence(&ev, &name);
    assert_eq!(p, alternating(p.len()), "{:?}", kinds(&ev, &name));
    leader.flush(&name, 15_000).unwrap();
    assert_state_eq(&s.record_field(&name, "state"), "{\"v\":2}", "");
    let states = rec.states(&name);
    assert_increasing(&states);
    assert_states_from(
        &states,
        &[
            (0, "{}"),
            (1, "{\"v\":1}"),
            (2, "{\"v\":\"1b\"}"),
            (3, "{\"v\":2}"),
        ],
    );
}

/// Issue 12 item 8: Webdis acknowledges a subscription (response head and
/// the subscribe object), then nothing published ever reaches the
/// follower, while the connection stays open. The first two subscriptions
/// are so: connect must find out (within its timeout) and subscribe again,
/// so that states published once connected arrive at once, not after the
/// silence detection of 2 to 3 heartbeat intervals (5 s by default).
#[test]
fn a_subscription_acknowledged_but_never_fed_is_replaced_before_states_are_missed() {
    let s = Servers::start();
    let relay = FaultRelay::start(
        s.webdis_port,
        Faults {
            mute_subscriptions: 2,
            ..Faults::default()
        },
    );
    let leader = s.client();
    let name = unique("muted");
    leader.start(&name, "pw", "code").unwrap();
    let follower = Client::new(&relay.url).unwrap();
    follower.set_timeout(6000).unwrap();
    let rec = Recorder::attach(&follower);
    let t0 = Instant::now();
    if let Err(e) = follower.connect(&name, "pw") {
        panic!("connect failed after {:?}: {e:?}", t0.elapsed());
    }
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "connect took {:?}, over its timeout",
        t0.elapsed()
    );
    rec.wait_state(&name, "{}", T);
    for k in 1..=2u64 {
        let state = format!("{{\"v\":{k}}}");
        leader.publish(&name, state.as_bytes()).unwrap();
        let published = Instant::now();
        leader.flush(&name, 10_000).unwrap();
        let within =
            (published + Duration::from_millis(2500)).saturating_duration_since(Instant::now());
        let got = wait_for(&rec, within, |ev| {
            ev.iter()
                .any(|e| e.state.as_deref() == Some(state.as_str()))
        });
        assert!(
            got.is_some(),
            "{state} was not delivered within 2.5 s of its publish (heartbeat 5 s; \
             {} subscriptions, {} acknowledged then muted): {:?}",
            relay.subscribes(),
            relay.muted(),
            rec.snapshot()
        );
    }
    assert_eq!(relay.muted(), 2, "both muted subscriptions were played");
    assert!(
        relay.subscribes() >= 3,
        "{} subscriptions",
        relay.subscribes()
    );
    assert_eq!(
        rec.states(&name),
        seq_states(&[(0, "{}"), (1, "{\"v\":1}"), (2, "{\"v\":2}")])
    );
    assert_eq!(count(&rec.snapshot(), &name, EventKind::MS_EVENT_ENDED), 0);
}
