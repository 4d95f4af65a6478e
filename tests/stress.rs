//! Several threads leading and following many streams on shared clients:
//! everything converges to the last state, in order, with no deadlock.

mod common;

use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn threads_share_clients_and_converge() {
    let s = Servers::start();
    let leaders = Arc::new(s.client());
    let followers: Vec<Arc<missionstream::Client>> = (0..2).map(|_| Arc::new(s.client())).collect();
    let recs: Vec<Arc<Recorder>> = followers.iter().map(|f| Recorder::attach(f)).collect();
    let streams: Vec<String> = (0..12).map(|i| unique(&format!("stress{i}"))).collect();
    for n in &streams {
        leaders.start(n, "pw", "code").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|scope| {
        // Followers connect from several threads at once, disconnecting and
        // reconnecting some streams while states flow.
        for (fi, f) in followers.iter().enumerate() {
            for chunk in streams.chunks(4) {
                let f = f.clone();
                scope.spawn(move || {
                    for n in chunk {
                        f.connect(n, "pw").unwrap();
                    }
                    for n in chunk.iter().take(1 + fi) {
                        f.disconnect(n).unwrap();
                        f.connect(n, "pw").unwrap();
                    }
                });
            }
        }
        // Four leader threads publish on their own streams of one client.
        for chunk in streams.chunks(3) {
            let l = leaders.clone();
            scope.spawn(move || {
                for i in 0..300 {
                    for n in chunk {
                        l.publish(n, format!("{{\"n\":\"{n}\",\"i\":{i}}}").as_bytes())
                            .unwrap();
                    }
                    if i % 100 == 0 {
                        // Listing and flushing from other threads at the same time.
                        l.list().unwrap();
                    }
                }
                for n in chunk {
                    l.flush(n, 30_000).unwrap();
                }
            });
        }
    });
    for n in &streams {
        let last = format!("{{\"n\":\"{n}\",\"i\":299}}");
        for r in &recs {
            r.wait_state(n, &last, deadline.saturating_duration_since(Instant::now()));
            // A stream followed again starts a new session with the
            // current state, so one seq may repeat at that point; within a
            // session seq strictly increases, so it never goes back.
            let states = r.states(n);
            for w in states.windows(3) {
                assert!(
                    w[0].0 <= w[1].0 && w[1].0 <= w[2].0,
                    "seq went back: {}",
                    states_excerpt(w)
                );
                assert!(
                    w[0].0 < w[2].0,
                    "seq repeated beyond a reconnect: {}",
                    states_excerpt(w)
                );
            }
        }
        assert_state_eq(&s.record_field(n, "state"), &last, "");
    }
    let listed = leaders.list().unwrap();
    for n in &streams {
        let info = listed.iter().find(|i| &i.name == n).unwrap();
        assert_eq!(info.followers, 2, "{n}");
    }
}
