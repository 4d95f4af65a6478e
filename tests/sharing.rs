//! Follows of one stream in one client share one subscription, one
//! presence session and one probe; each still gets every state. (Through
//! the API a client follows a name once; `connect_member` adds another
//! follow of the name to the same client, as a group of follows.)

mod common;

use common::*;
use missionstream::{Client, EventKind};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// Subscriptions Redis holds on `channel`.
fn numsub(s: &Servers, channel: &str) -> u64 {
    let out = s.redis_cli(&["PUBSUB", "NUMSUB", channel]);
    out.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("PUBSUB NUMSUB said {out:?}"))
}

/// How many STATE events of `name` carry `state`.
fn count(ev: &[Rec], name: &str, state: &str) -> usize {
    ev.iter()
        .filter(|e| {
            e.kind == EventKind::MS_EVENT_STATE
                && e.stream == name
                && e.state.as_deref() == Some(state)
        })
        .count()
}

fn copies(rec: &Recorder, name: &str, state: &str) -> usize {
    count(&rec.snapshot(), name, state)
}

/// Publishes `state` and waits until `n` STATE events carry it.
fn publish_seen(leader: &Client, rec: &Recorder, name: &str, state: &str, n: usize) {
    leader.publish(name, state.as_bytes()).unwrap();
    leader.flush(name, 20_000).unwrap();
    rec.wait(T, |ev| count(ev, name, state) >= n);
}

#[test]
fn two_follows_of_one_stream_in_one_client_share_one_subscription() {
    let s = Servers::start();
    let name = unique("shared");
    let leader = s.client();
    leader.start(&name, "pw", "code").unwrap();
    publish_seen(&leader, &Recorder::default(), &name, "{\"n\":0}", 0);
    let follower = s.client();
    let rec = Recorder::attach(&follower);
    follower.connect(&name, "pw").unwrap();
    // The second follow joins a group that delivered: the newest state,
    // at once (connect returned once it was queued).
    let member = follower.connect_member(&name, "pw").unwrap();
    rec.wait(T, |ev| count(ev, &name, "{\"n\":0}") == 2);
    let channel = s.record_field(&name, "channel");
    assert_eq!(numsub(&s, &channel), 1, "one subscription for both");
    // Every state reaches both, in order.
    for i in 1..=5 {
        publish_seen(&leader, &rec, &name, &format!("{{\"n\":{i}}}"), 2);
    }
    for i in 0..=5 {
        assert_eq!(
            copies(&rec, &name, &format!("{{\"n\":{i}}}")),
            2,
            "state {i}"
        );
    }
    let states = rec.states(&name);
    assert!(
        states.windows(2).all(|w| w[0].0 <= w[1].0),
        "in order: {states:?}"
    );
    // One leaves: the other still gets states, on the same subscription.
    follower.disconnect_member(member).unwrap();
    publish_seen(&leader, &rec, &name, "{\"n\":6}", 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(copies(&rec, &name, "{\"n\":6}"), 1, "the member left");
    assert_eq!(numsub(&s, &channel), 1);
    // A new member gets the newest state at once; then the first leaves.
    let member = follower.connect_member(&name, "pw").unwrap();
    rec.wait(T, |ev| count(ev, &name, "{\"n\":6}") == 2);
    follower.disconnect(&name).unwrap();
    publish_seen(&leader, &rec, &name, "{\"n\":7}", 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(copies(&rec, &name, "{\"n\":7}"), 1);
    assert_eq!(numsub(&s, &channel), 1);
    // The last one gone: the subscription is closed.
    follower.disconnect_member(member).unwrap();
    wait_until(T, || numsub(&s, &channel) == 0);
    assert_eq!(
        numsub(&s, &channel),
        0,
        "the group went with its last member"
    );
    // ENDED reaches every member.
    let rec_count = |ev: &[Rec], kind| {
        ev.iter()
            .filter(|e| e.kind == kind && e.stream == name)
            .count()
    };
    follower.connect(&name, "pw").unwrap();
    follower.connect_member(&name, "pw").unwrap();
    leader.stop(&name).unwrap();
    rec.wait(T, |ev| rec_count(ev, EventKind::MS_EVENT_ENDED) == 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rec_count(&rec.snapshot(), EventKind::MS_EVENT_ENDED), 2);
    assert_eq!(numsub(&s, &channel), 0);
}

/// A group's members are disconnected from inside the callback (the
/// dispatcher thread): the other member keeps getting states; the last
/// one disconnected there closes the subscription.
#[test]
fn a_member_disconnected_from_its_callback_leaves_the_other_served() {
    let s = Servers::start();
    let name = unique("shared-cb");
    let leader = s.client();
    leader.start(&name, "pw", "code").unwrap();
    publish_seen(&leader, &Recorder::default(), &name, "{\"n\":0}", 0);
    let follower = Arc::new(s.client());
    let rec = Arc::new(Recorder::default());
    // The state on which the callback disconnects the named follow, then
    // the member.
    let drop_named = Arc::new(Mutex::new(None::<String>));
    let drop_member = Arc::new(Mutex::new(None::<(String, u64)>));
    let done = Arc::new(AtomicBool::new(false));
    {
        let weak: Weak<Client> = Arc::downgrade(&follower);
        let (rec, named, member, done, stream) = (
            rec.clone(),
            drop_named.clone(),
            drop_member.clone(),
            done.clone(),
            name.clone(),
        );
        follower.set_callback(Some(Arc::new(move |e: &missionstream::Event| {
            rec.record(e);
            let Some(state) = e.state.as_ref().map(|s| s.as_str().to_string()) else {
                return;
            };
            let Some(client) = weak.upgrade() else { return };
            if named.lock().unwrap().as_deref() == Some(state.as_str()) {
                named.lock().unwrap().take();
                client.disconnect(&stream).unwrap();
            }
            let m = member.lock().unwrap().clone();
            if let Some((at, session)) = m {
                if at == state {
                    member.lock().unwrap().take();
                    client.disconnect_member(session).unwrap();
                    done.store(true, Ordering::SeqCst);
                }
            }
        })));
    }
    follower.connect(&name, "pw").unwrap();
    let member = follower.connect_member(&name, "pw").unwrap();
    rec.wait(T, |ev| count(ev, &name, "{\"n\":0}") == 2);
    let channel = s.record_field(&name, "channel");
    *drop_named.lock().unwrap() = Some("{\"n\":1}".into());
    publish_seen(&leader, &rec, &name, "{\"n\":1}", 1);
    wait_until(T, || drop_named.lock().unwrap().is_none());
    publish_seen(&leader, &rec, &name, "{\"n\":2}", 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(copies(&rec, &name, "{\"n\":2}"), 1, "one member left");
    assert_eq!(numsub(&s, &channel), 1);
    *drop_member.lock().unwrap() = Some(("{\"n\":3}".into(), member));
    publish_seen(&leader, &rec, &name, "{\"n\":3}", 1);
    wait_until(T, || done.load(Ordering::SeqCst));
    wait_until(T, || numsub(&s, &channel) == 0);
    assert_eq!(
        numsub(&s, &channel),
        0,
        "the last member left from its callback"
    );
    publish_seen(&leader, &rec, &name, "{\"n\":4}", 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        copies(&rec, &name, "{\"n\":4}"),
        0,
        "nobody follows any more"
    );
}

/// The probes of a silent stream: one session's per group of follows in a
/// client (its probe tokens share the session's random prefix), one per
/// client across clients; two clients hold two subscriptions.
#[test]
fn a_silent_stream_is_probed_once_per_client_not_once_per_follow() {
    let s = Servers::start();
    let name = unique("shared-probe");
    let leader = s.client();
    leader.set_heartbeat(200).unwrap();
    leader.start(&name, "pw", "code").unwrap();
    publish_seen(&leader, &Recorder::default(), &name, "{\"n\":0}", 0);
    let a = s.client();
    let rec_a = Recorder::attach(&a);
    a.connect(&name, "pw").unwrap();
    a.connect_member(&name, "pw").unwrap();
    let b = s.client();
    let rec_b = Recorder::attach(&b);
    b.connect(&name, "pw").unwrap();
    let channel = s.record_field(&name, "channel");
    assert_eq!(numsub(&s, &channel), 2, "one subscription per client");
    // Every message on the channel, as Redis publishes it.
    let mut observer = Command::new("redis-cli")
        .args(["-p", &s.redis_port.to_string(), "SUBSCRIBE", &channel])
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli is installed");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let out = observer.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        })
    };
    wait_until(T, || numsub(&s, &channel) == 3);
    // The leader goes without a word: the stream falls silent, each
    // client probes it and reports the leader offline.
    drop(leader);
    let offline = |ev: &[Rec]| {
        ev.iter()
            .filter(|e| e.kind == EventKind::MS_EVENT_LEADER_OFFLINE)
            .count()
    };
    rec_a.wait(T, |ev| offline(ev) == 2);
    rec_b.wait(T, |ev| offline(ev) == 1);
    std::thread::sleep(Duration::from_millis(1000));
    let _ = observer.kill();
    let _ = observer.wait();
    let _ = reader.join();
    // A session's probe tokens: its 16-digit random prefix, then a count
    // (an opening's proof is 16 digits alone).
    let probes: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| l.strip_prefix("p "))
        .filter(|t| t.len() > 16)
        .map(|t| t[..16].to_string())
        .collect();
    let mut sessions = probes.clone();
    sessions.sort();
    sessions.dedup();
    eprintln!("{} probes from {} sessions", probes.len(), sessions.len());
    assert!(!probes.is_empty(), "the silent stream was probed");
    assert_eq!(
        sessions.len(),
        2,
        "one probing session per client (the two follows of one client share one): {probes:?}"
    );
    // Both of a's follows and b's were told, and still follow.
    assert_eq!(numsub(&s, &channel), 2);
    drop(a);
    drop(b);
    wait_until(T, || numsub(&s, &channel) == 0);
}
