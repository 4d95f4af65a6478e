//! The non-blocking SUBSCRIBE of the reactor (src/net/subscription.rs),
//! driven by hand on one poller the way the reactor will drive it,
//! against a real Webdis (plain), a fault relay in front of it, and the
//! tests' TLS front (nginx with deploy/nginx-webdis.conf). Production does
//! not use it yet (docs/internals/fixed-threads.md).

mod common;

use common::faults::{FaultRelay, Faults, GarbleChunk};
use common::tls::TlsFront;
use common::*;
use missionstream::internals::{load_ca_file, Endpoint, Poller, Subscription};
use missionstream::protocol::SubscriptionItem;
use missionstream::{Error, Kind, Status};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Generous: the machine may be loaded.
const T: Duration = Duration::from_secs(20);

/// One subscription on its own poller, as the reactor holds it.
struct Driven {
    poller: Poller,
    sub: Subscription,
    items: Vec<SubscriptionItem>,
    /// Turns of the loop that found the socket ready.
    turns: usize,
}

impl Driven {
    fn open(url: &str, channel: &str, ca_file: Option<&std::path::Path>) -> Result<Driven, Error> {
        let endpoint = Endpoint::parse(url).unwrap();
        if let Some(f) = ca_file {
            endpoint.set_tls_roots(load_ca_file(f).unwrap(), f.display().to_string());
        }
        let endpoint = Arc::new(endpoint);
        let addr = endpoint.resolve().unwrap()[0];
        let sub = Subscription::connect(endpoint, addr, channel)?;
        let poller = Poller::new().unwrap();
        // SAFETY: deleted in Drop, before the subscription (and its socket).
        unsafe { poller.add(sub.socket(), 1, sub.interest()).unwrap() };
        Ok(Driven {
            poller,
            sub,
            items: Vec::new(),
            turns: 0,
        })
    }

    /// Waits for readiness and does the I/O, until `done` holds of the
    /// items, the subscription fails (its error) or `T` passes (a panic).
    fn until(&mut self, done: impl Fn(&[SubscriptionItem]) -> bool) -> Result<(), Error> {
        let deadline = Instant::now() + T;
        let mut ready = Vec::new();
        while !done(&self.items) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "nothing in {T:?}; items: {:?}", self.items);
            ready.clear();
            self.poller.wait(&mut ready, Some(left)).unwrap();
            if ready.is_empty() {
                continue;
            }
            assert!(ready.iter().all(|r| r.key == 1), "{ready:?}");
            self.turns += 1;
            self.sub.on_ready(&mut self.items)?;
            self.poller
                .rearm(self.sub.socket(), 1, self.sub.interest())
                .unwrap();
        }
        Ok(())
    }

    fn messages(&self) -> Vec<&str> {
        self.items
            .iter()
            .filter_map(|i| match i {
                SubscriptionItem::Message { payload, .. } => Some(payload.as_str()),
                _ => None,
            })
            .collect()
    }

    fn subscribed(&mut self, channel: &str) {
        self.until(|items| !items.is_empty()).unwrap();
        assert_eq!(
            self.items[0],
            SubscriptionItem::Subscribed {
                channel: channel.into()
            }
        );
        assert!(self.sub.is_streaming());
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        let _ = self.poller.delete(self.sub.socket());
    }
}

fn publish(s: &Servers, channel: &str, message: &str) {
    let n = s.redis_cli(&["PUBLISH", channel, message]);
    assert_eq!(n.trim(), "1", "one subscriber: {n}");
}

#[test]
fn plain_subscribe_receives_what_is_published_in_order_until_webdis_dies() {
    let mut s = Servers::start();
    let channel = unique("sub-plain");
    let mut d = Driven::open(&s.url, &channel, None).unwrap();
    d.subscribed(&channel);
    // A message larger than a read (and than a Webdis chunk) comes whole.
    let big: String = (0..100_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let sent = ["one", "s 2 3\n{\"a\":\"}{\\\"\"}", &big, "four"];
    // One at a time: Webdis 0.1.9 may hand messages that reached it in one
    // read from Redis to its subscribers in reverse order.
    for (i, m) in sent.iter().enumerate() {
        publish(&s, &channel, m);
        d.until(|items| items.len() == 2 + i).unwrap();
    }
    assert_eq!(d.messages(), sent);
    assert_eq!(d.sub.pending(), 0);

    // Quiet: no readiness, no items.
    let before = d.items.len();
    let mut ready = Vec::new();
    d.poller
        .wait(&mut ready, Some(Duration::from_millis(300)))
        .unwrap();
    assert!(ready.is_empty(), "{ready:?}");
    assert_eq!(d.items.len(), before);

    s.stop_webdis();
    let started = Instant::now();
    let e = d.until(|_| false).unwrap_err();
    assert_eq!(e.status, Status::MS_ERR_UNAVAILABLE, "{e}");
    assert!(
        e.message.contains("closed the subscription") || e.message.contains("broke"),
        "{e}"
    );
    assert!(started.elapsed() < T);
}

#[test]
fn a_refused_connection_is_unreachable() {
    let port = free_port();
    let e = match Driven::open(&format!("http://127.0.0.1:{port}"), "c", None) {
        Err(e) => e,
        Ok(mut d) => d.until(|_| false).unwrap_err(),
    };
    assert_eq!(
        (e.status, e.kind),
        (Status::MS_ERR_UNAVAILABLE, Kind::Unreachable),
        "{e}"
    );
    assert!(e.message.contains(&format!("127.0.0.1:{port}")), "{e}");
}

/// What Webdis 0.1.9 once did to the body of a new subscription: a chunk
/// size that is not one. The subscription ends as garbled (replaced at
/// once by the follower), after the messages before it.
#[test]
fn a_garbled_chunk_ends_the_subscription_as_garbled() {
    let s = Servers::start();
    let relay = FaultRelay::start(
        s.webdis_port,
        Faults {
            garble_chunk_size: Some(GarbleChunk {
                subscriptions: 1,
                pattern: "second",
                nth: 1,
            }),
            ..Faults::default()
        },
    );
    let channel = unique("sub-garbled");
    let mut d = Driven::open(&relay.url, &channel, None).unwrap();
    d.subscribed(&channel);
    publish(&s, &channel, "first");
    d.until(|items| items.len() == 2).unwrap();
    publish(&s, &channel, "second");
    let e = d.until(|_| false).unwrap_err();
    assert_eq!(
        (e.status, e.kind),
        (Status::MS_ERR_PROTOCOL, Kind::Garbled),
        "{e}"
    );
    assert!(e.message.contains("hexadecimal"), "{e}");
    assert_eq!(d.messages(), ["first"]);
    assert_eq!(relay.chunk_sizes_garbled(), 1);

    // The next subscription through the relay is left alone (another
    // channel: Webdis may hold the broken one a while longer).
    let channel = unique("sub-garbled-again");
    let mut again = Driven::open(&relay.url, &channel, None).unwrap();
    again.subscribed(&channel);
    publish(&s, &channel, "third");
    again.until(|items| items.len() == 2).unwrap();
    assert_eq!(again.messages(), ["third"]);
}

#[test]
fn tls_subscribe_receives_what_is_published() {
    let s = Servers::start();
    let front = TlsFront::start(&s);
    let channel = unique("sub-tls");
    let mut d = Driven::open(&front.url, &channel, Some(&front.ca_file)).unwrap();
    d.subscribed(&channel);
    let big: String = "0123456789".repeat(9_000);
    let sent = ["one", &big, "three"];
    // One at a time, as above: Webdis may reverse what it read at once.
    for (i, m) in sent.iter().enumerate() {
        publish(&s, &channel, m);
        d.until(|items| items.len() == 2 + i).unwrap();
    }
    assert_eq!(d.messages(), sent);
}

/// Each handshake failure fails the subscription at once (well within the
/// wait), with the error the blocking client gives for it.
#[test]
fn tls_handshake_failures_are_named() {
    let s = Servers::start();
    let front = TlsFront::start(&s);
    let fails = |url: &str, ca: Option<&std::path::Path>, status: Status, causes: &[&str]| {
        let started = Instant::now();
        let e = match Driven::open(url, "c", ca) {
            Err(e) => e,
            Ok(mut d) => {
                let e = d.until(|_| false).unwrap_err();
                assert!(d.items.is_empty(), "{url}: {:?}", d.items);
                e
            }
        };
        assert_eq!(e.status, status, "{url}: {e}");
        assert!(
            causes.iter().any(|c| e.message.contains(c)),
            "{url}: {causes:?} not in {e}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{url}: {e}");
        eprintln!("{url}: {e}");
    };
    // No CA file: the bundled web roots do not know the tests' CA.
    fails(
        &front.url,
        None,
        Status::MS_ERR_UNAVAILABLE,
        &["certificate not trusted"],
    );
    // Another CA.
    fails(
        &front.url,
        Some(&front.other_ca_file),
        Status::MS_ERR_UNAVAILABLE,
        &["certificate not trusted: the server's certificate is not issued by a certificate authority of the CA file"],
    );
    // A certificate for another host.
    fails(
        &format!("https://127.0.0.1:{}", front.wrong_host_port),
        Some(&front.ca_file),
        Status::MS_ERR_UNAVAILABLE,
        &["host name mismatch"],
    );
    // https:// to Webdis itself (no TLS there).
    fails(
        &format!("https://127.0.0.1:{}", s.webdis_port),
        Some(&front.ca_file),
        Status::MS_ERR_PROTOCOL,
        &["does not speak TLS"],
    );
    // http:// to the TLS port: nginx's 400.
    fails(
        &format!("http://127.0.0.1:{}", front.port),
        None,
        Status::MS_ERR_PROTOCOL,
        &["speaks TLS"],
    );
    // A port that reads the hello and hangs up.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = std::io::Read::read(&mut conn, &mut [0u8; 4096]);
        }
    });
    fails(
        &format!("https://127.0.0.1:{port}"),
        None,
        Status::MS_ERR_UNAVAILABLE,
        &["closed the connection during the TLS handshake"],
    );
    // And the front still serves a good one.
    let mut d = Driven::open(&front.url, "after", Some(&front.ca_file)).unwrap();
    d.subscribed("after");
}
