//! The C boundary: NULLs, bad UTF-8, limits and messages, through the
//! exported functions themselves.

mod common;

use common::*;
use missionstream::ffi::*;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::AssertUnwindSafe;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn last_error() -> String {
    unsafe { CStr::from_ptr(ms_last_error()) }
        .to_str()
        .unwrap()
        .to_string()
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

#[test]
fn version_and_status_names() {
    let v = unsafe { CStr::from_ptr(ms_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    let names: Vec<String> = (0..17)
        .map(|i| {
            unsafe { CStr::from_ptr(ms_status_name(StatusArg(i))) }
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names[0], "MS_OK");
    assert_eq!(names[3], "MS_ERR_NOT_FOUND");
    assert_eq!(names[15], "MS_ERR_INTERNAL");
    assert_eq!(names[16], "MS_ERR_THROTTLED");
    for bad in [17, 99, u32::MAX] {
        let n = unsafe { CStr::from_ptr(ms_status_name(StatusArg(bad))) };
        assert_eq!(n.to_str().unwrap(), "MS_UNKNOWN_STATUS");
    }
}

#[test]
fn the_transient_statuses_are_those_the_library_retries() {
    let transient: Vec<String> = (0..17)
        .filter(|&i| ms_status_is_transient(StatusArg(i)) == 1)
        .map(|i| {
            unsafe { CStr::from_ptr(ms_status_name(StatusArg(i))) }
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        transient,
        [
            "MS_ERR_TIMEOUT",
            "MS_ERR_UNAVAILABLE",
            "MS_ERR_SERVER",
            "MS_ERR_PROTOCOL",
            "MS_ERR_THROTTLED"
        ]
    );
    for other in [0, 3, 17, 99, u32::MAX] {
        assert_eq!(ms_status_is_transient(StatusArg(other)), 0, "{other}");
    }
}

#[test]
fn every_function_refuses_null_without_crashing() {
    unsafe {
        let mut client: *mut ms_client = null_mut();
        assert_eq!(
            ms_client_new(null(), &mut client),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert!(
            last_error().contains("webdis_url is NULL"),
            "{}",
            last_error()
        );
        assert!(client.is_null(), "out is written only on success");
        assert_eq!(
            ms_client_new(c("http://127.0.0.1:1").as_ptr(), null_mut()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_client_new(c("nonsense").as_ptr(), &mut client),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert!(
            last_error().starts_with("ms_client_new: "),
            "{}",
            last_error()
        );

        let n = c("n");
        let p = c("p");
        let nul = null_mut();
        assert_eq!(
            ms_client_set_timeout(nul, 1),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_client_set_stream_ttl(nul, 1),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_client_set_heartbeat(nul, 1000),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_client_set_tls_ca_file(nul, p.as_ptr()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_client_set_kdf_iterations(nul, 600_000),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_set_callback(nul, None, null_mut()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_start(nul, n.as_ptr(), p.as_ptr(), p.as_ptr()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_reconnect(nul, n.as_ptr(), p.as_ptr(), p.as_ptr()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_publish(nul, n.as_ptr(), p.as_ptr(), 1),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_flush(nul, n.as_ptr(), 1),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(ms_stop(nul, n.as_ptr()), ms_status::MS_ERR_INVALID_ARGUMENT);
        assert_eq!(
            ms_connect(nul, n.as_ptr(), p.as_ptr()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_disconnect(nul, n.as_ptr()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        let mut list: *mut ms_stream_info = null_mut();
        let mut count = 0usize;
        assert_eq!(
            ms_list(nul, &mut list, &mut count),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("client is NULL"), "{}", last_error());
        ms_client_free(null_mut());
        ms_list_free(null_mut(), 0);
        ms_list_free(null_mut(), 5);

        // With a client (no server needed: arguments are checked first).
        assert_eq!(
            ms_client_new(c("http://127.0.0.1:1").as_ptr(), &mut client),
            ms_status::MS_OK
        );
        assert!(!client.is_null());
        assert_eq!(
            ms_start(client, null(), p.as_ptr(), p.as_ptr()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("name is NULL"));
        assert_eq!(
            ms_start(client, n.as_ptr(), null(), p.as_ptr()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("password is NULL"));
        assert_eq!(
            ms_start(client, n.as_ptr(), p.as_ptr(), null()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("leader_code is NULL"));
        assert_eq!(
            ms_reconnect(client, null(), p.as_ptr(), p.as_ptr()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_connect(client, n.as_ptr(), null()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_connect(client, null(), p.as_ptr()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_disconnect(client, null()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(ms_stop(client, null()), ms_status::MS_ERR_INVALID_ARGUMENT);
        assert_eq!(
            ms_flush(client, null(), 1),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_publish(client, null(), p.as_ptr(), 1),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_publish(client, n.as_ptr(), null(), 0),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("state is NULL"));
        assert_eq!(
            ms_client_set_tls_ca_file(client, null()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("path is NULL"), "{}", last_error());
        assert_eq!(
            ms_client_set_tls_ca_file(client, c("").as_ptr()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("path is empty"), "{}", last_error());
        // A path is bytes, not necessarily UTF-8: this one does not exist.
        let odd_path = CString::new(b"/nonexistent-\xff\xfe.pem".to_vec()).unwrap();
        assert_eq!(
            ms_client_set_tls_ca_file(client, odd_path.as_ptr()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert!(
            last_error().starts_with("ms_client_set_tls_ca_file: cannot read the CA file"),
            "{}",
            last_error()
        );
        assert_eq!(
            ms_list(client, null_mut(), &mut count),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_list(client, &mut list, null_mut()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        // Bad UTF-8 in each string argument.
        let bad = CString::new(vec![b'a', 0xff, 0xfe]).unwrap();
        assert_eq!(
            ms_start(client, bad.as_ptr(), p.as_ptr(), p.as_ptr()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("not valid UTF-8"), "{}", last_error());
        assert_eq!(
            ms_start(client, n.as_ptr(), bad.as_ptr(), p.as_ptr()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_connect(client, n.as_ptr(), bad.as_ptr()),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ms_client_new(bad.as_ptr(), &mut list as *mut _ as *mut *mut ms_client),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        // A huge length is refused before anything is read.
        assert_eq!(
            ms_publish(client, n.as_ptr(), p.as_ptr(), usize::MAX),
            ms_status::MS_ERR_TOO_LARGE
        );
        assert!(last_error().contains("8 MiB"), "{}", last_error());
        assert_eq!(
            ms_publish(client, n.as_ptr(), p.as_ptr(), 1),
            ms_status::MS_ERR_NOT_LEADING
        );
        assert_eq!(
            ms_client_set_timeout(client, 0),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(ms_client_set_timeout(client, 200), ms_status::MS_OK);
        // Unreachable Webdis: a clear status and message.
        assert_eq!(
            ms_start(client, n.as_ptr(), p.as_ptr(), p.as_ptr()),
            ms_status::MS_ERR_UNAVAILABLE
        );
        assert!(
            last_error().contains("cannot reach Webdis"),
            "{}",
            last_error()
        );
        // The message is per thread.
        std::thread::spawn(|| assert_eq!(last_error(), ""))
            .join()
            .unwrap();
        ms_client_free(client);
    }
}

/// Timeouts of the tests with servers: generous, since `make test` also
/// runs this binary under valgrind (tens of times slower).
const T: Duration = Duration::from_secs(60);

/// The clients of a test and the data their C callbacks get. Dropped, on
/// every path (a failed assertion's unwind included), it clears each
/// client's callback and frees each client, and only then drops the data
/// (fields drop after `Drop::drop`): a callback never runs on freed
/// memory, which is the user_data rule of ms_set_callback. Declared after
/// `Servers`, it is dropped before them: no client outlives Webdis.
struct Abi<T> {
    clients: Vec<*mut ms_client>,
    data: Vec<Box<T>>,
}

impl<T: Sync> Abi<T> {
    fn new() -> Self {
        Abi {
            clients: Vec::new(),
            data: Vec::new(),
        }
    }

    /// A new client of `url`, freed by the guard. Streams it starts use
    /// the fewest KDF iterations (valgrind makes PBKDF2 slow).
    fn client(&mut self, url: &str) -> *mut ms_client {
        let url = c(url);
        let mut client: *mut ms_client = null_mut();
        unsafe {
            assert_eq!(ms_client_new(url.as_ptr(), &mut client), ms_status::MS_OK);
            self.clients.push(client);
            assert_eq!(
                ms_client_set_kdf_iterations(client, 100_000),
                ms_status::MS_OK
            );
        }
        client
    }

    /// Keeps `data` until the clients are freed (or `release`); the
    /// pointer to give ms_set_callback.
    fn keep(&mut self, data: T) -> *mut c_void {
        let b = Box::new(data);
        let p = &*b as *const T as *mut c_void;
        self.data.push(b);
        p
    }

    /// The data behind a pointer `keep` returned.
    fn get(&self, p: *mut c_void) -> &T {
        self.data
            .iter()
            .find(|b| std::ptr::eq(&***b, p as *const T))
            .expect("data of this guard")
    }

    /// Drops the data behind `p` now. Only once no callback can use it:
    /// ms_set_callback replaced it, or its client was freed.
    fn release(&mut self, p: *mut c_void) {
        let i = self
            .data
            .iter()
            .position(|b| std::ptr::eq(&**b, p as *const T))
            .expect("data of this guard");
        drop(self.data.remove(i));
    }

    /// Frees `client` now.
    fn free(&mut self, client: *mut ms_client) {
        let i = self
            .clients
            .iter()
            .position(|&x| x == client)
            .expect("a client of this guard");
        self.clients.remove(i);
        unsafe { ms_client_free(client) };
    }
}

impl<T> Drop for Abi<T> {
    fn drop(&mut self) {
        unsafe {
            for &client in &self.clients {
                ms_set_callback(client, None, null_mut());
            }
            for client in self.clients.drain(..).rev() {
                ms_client_free(client);
            }
        }
        // self.data is dropped after this, when no callback can run.
    }
}

/// (kind, stream, data, seq, len) of each event.
type SeenEvent = (ms_event_kind, String, Option<String>, u64, usize);

#[derive(Default)]
struct Seen {
    events: Mutex<Vec<SeenEvent>>,
}

impl Seen {
    fn snapshot(&self) -> Vec<SeenEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until an event satisfies `f`.
    fn wait(&self, what: &str, f: impl Fn(&SeenEvent) -> bool) {
        let deadline = Instant::now() + T;
        while !self.events.lock().unwrap().iter().any(&f) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {T:?}: {}",
                list_excerpt(
                    &self
                        .snapshot()
                        .iter()
                        .map(|(k, n, st, q, len)| (
                            k,
                            n.clone(),
                            st.as_deref().map(Excerpt),
                            q,
                            len
                        ))
                        .collect::<Vec<_>>()
                )
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_state(&self, seq: u64) {
        self.wait(&format!("the state of seq {seq}"), |e| {
            e.0 == ms_event_kind::MS_EVENT_STATE && e.3 == seq
        });
    }

    /// The (seq, data) of the STATE events.
    fn states(&self) -> States {
        States(
            self.snapshot()
                .into_iter()
                .filter(|e| e.0 == ms_event_kind::MS_EVENT_STATE)
                .map(|e| (e.3, e.2.unwrap()))
                .collect(),
        )
    }
}

unsafe extern "C" fn on_event(event: *const ms_event, user_data: *mut c_void) {
    let seen = &*(user_data as *const Seen);
    let e = &*event;
    let data = if e.data.is_null() {
        None
    } else {
        // len bytes, then a NUL.
        assert_eq!(*e.data.add(e.len), 0);
        Some(
            String::from_utf8(std::slice::from_raw_parts(e.data as *const u8, e.len).to_vec())
                .unwrap(),
        )
    };
    let stream = CStr::from_ptr(e.stream).to_str().unwrap().to_string();
    seen.events
        .lock()
        .unwrap()
        .push((e.kind, stream, data, e.seq, e.len));
}

fn publish(leader: *mut ms_client, name: &CStr, state: &str) {
    unsafe {
        assert_eq!(
            ms_publish(
                leader,
                name.as_ptr(),
                state.as_ptr() as *const c_char,
                state.len()
            ),
            ms_status::MS_OK
        );
        assert_eq!(ms_flush(leader, name.as_ptr(), 30_000), ms_status::MS_OK);
    }
}

#[test]
fn c_callback_and_list_through_the_abi() {
    let s = Servers::start();
    let mut abi = Abi::<Seen>::new();
    let leader = abi.client(&s.url);
    let follower = abi.client(&s.url);
    let seen_ptr = abi.keep(Seen::default());
    unsafe {
        assert_eq!(
            ms_set_callback(follower, Some(on_event), seen_ptr),
            ms_status::MS_OK
        );
        let name = c("ffi/plan.v1");
        let pw = c("pw");
        assert_eq!(
            ms_start(leader, name.as_ptr(), pw.as_ptr(), c("code").as_ptr()),
            ms_status::MS_OK
        );
        assert_eq!(
            ms_connect(follower, name.as_ptr(), pw.as_ptr()),
            ms_status::MS_OK
        );
        // The join state before anything is published: a state published
        // while it waits for the callback would replace it (latest wins).
        abi.get(seen_ptr).wait_state(0);
        // Webdis cannot carry a NUL: refused up front, never truncated.
        let nul = b"{\"a\":\"x\0y\"}";
        assert_eq!(
            ms_publish(
                leader,
                name.as_ptr(),
                nul.as_ptr() as *const c_char,
                nul.len()
            ),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("NUL"), "{}", last_error());
        let state = "{\"a\":\"x\\u0000y ✈\"}";
        publish(leader, &name, state);
        let seen = abi.get(seen_ptr);
        seen.wait_state(1);
        {
            let ev = seen.snapshot();
            assert_eq!(ev[0].0, ms_event_kind::MS_EVENT_STATE);
            assert_eq!(
                (ev[0].1.as_str(), ev[0].2.as_deref(), ev[0].3, ev[0].4),
                ("ffi/plan.v1", Some("{}"), 0, 2)
            );
            let last = ev.last().unwrap();
            assert_eq!(last.0, ms_event_kind::MS_EVENT_STATE);
            assert_eq!(last.2.as_deref(), Some(state));
            assert_eq!((last.3, last.4), (1, state.len()));
            assert_eq!(
                seen.states(),
                vec![(0, "{}".to_string()), (1, state.to_string())]
            );
        }
        let mut list: *mut ms_stream_info = null_mut();
        let mut count = 0usize;
        assert_eq!(ms_list(leader, &mut list, &mut count), ms_status::MS_OK);
        assert_eq!(count, 1);
        let info = &*list;
        assert_eq!(CStr::from_ptr(info.name).to_str().unwrap(), "ffi/plan.v1");
        assert_eq!((info.seq, info.followers), (1, 1));
        ms_list_free(list, count);
        // The same, with the leader's presence: heard just now (it
        // published), at the heartbeat interval it announced.
        let mut presence: *mut ms_stream_presence = null_mut();
        assert_eq!(
            ms_list_presence(leader, &mut presence, &mut count),
            ms_status::MS_OK
        );
        assert_eq!(count, 1);
        let p = &*presence;
        assert_eq!(CStr::from_ptr(p.info.name).to_str().unwrap(), "ffi/plan.v1");
        assert_eq!((p.info.seq, p.info.followers), (1, 1));
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!(
            (now_ms - 60_000..=now_ms + 60_000).contains(&p.heard_ms),
            "heard_ms {} is not about now ({now_ms})",
            p.heard_ms
        );
        assert_eq!(p.heartbeat_ms, 5000, "the library's default heartbeat");
        ms_list_presence_free(presence, count);
        assert_eq!(
            ms_list_presence(leader, null_mut(), &mut count),
            ms_status::MS_ERR_INVALID_ARGUMENT
        );
        ms_list_presence_free(null_mut(), 0);

        assert_eq!(ms_stop(leader, name.as_ptr()), ms_status::MS_OK);
        seen.wait("ENDED", |e| e.0 == ms_event_kind::MS_EVENT_ENDED);
        assert_eq!(ms_list(leader, &mut list, &mut count), ms_status::MS_OK);
        assert_eq!((count, list.is_null()), (0, true));
        ms_list_free(list, count);
    }
    // The guard clears the callback and frees both clients, then the data.
    drop(abi);
}

/// Callbacks of the panic test: each call is counted, then recorded.
static PANIC_TEST_CALLS: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn on_event_counted(event: *const ms_event, user_data: *mut c_void) {
    PANIC_TEST_CALLS.fetch_add(1, Ordering::SeqCst);
    on_event(event, user_data);
}

/// A test that fails (panics) while a follower's callback is set: the
/// guard's drop ends the callback before the user data is freed, so the
/// CONNECTION_LOST that Webdis' end would cause never reaches freed
/// memory (valgrind, in `make test`, would also see such a read).
#[test]
fn a_failing_test_ends_its_callbacks_before_their_data() {
    let mut s = Servers::start();
    let name = c("ffi/panics");
    let pw = c("pw");
    let unwound = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut abi = Abi::<Seen>::new();
        let leader = abi.client(&s.url);
        let follower = abi.client(&s.url);
        let seen = abi.keep(Seen::default());
        unsafe {
            assert_eq!(
                ms_set_callback(follower, Some(on_event_counted), seen),
                ms_status::MS_OK
            );
            assert_eq!(
                ms_start(leader, name.as_ptr(), pw.as_ptr(), c("code").as_ptr()),
                ms_status::MS_OK
            );
            assert_eq!(
                ms_connect(follower, name.as_ptr(), pw.as_ptr()),
                ms_status::MS_OK
            );
        }
        abi.get(seen).wait_state(0);
        panic!("a failed assertion while following");
    }));
    assert!(unwound.is_err());
    let calls = PANIC_TEST_CALLS.load(Ordering::SeqCst);
    assert!(calls >= 1, "the join state was delivered");
    // Webdis goes away: a follower still alive would report CONNECTION_LOST
    // to its callback, with the freed data.
    s.stop_webdis();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        PANIC_TEST_CALLS.load(Ordering::SeqCst),
        calls,
        "a callback ran after its test unwound"
    );
}

/// The callback paths of the C ABI, `MS_FFI_ROUNDS` times (default 1;
/// `make stress-ffi` runs many under valgrind): a client freed while
/// states flow to its callback, a follow ended then the client freed, a
/// callback replaced while states flow and its data freed as soon as
/// ms_set_callback returns, a callback set from scratch after being
/// cleared, and CONNECTION_LOST when Webdis is killed, delivered before
/// the clients are freed. Each user data is freed as soon as the rule of
/// ms_set_callback allows.
#[test]
fn callbacks_end_with_their_client_or_replacement_on_every_path() {
    let rounds: usize = std::env::var("MS_FFI_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut s = Servers::start();
    let pw = c("pw");
    for round in 0..rounds {
        let mut abi = Abi::<Seen>::new();
        let leader = abi.client(&s.url);
        let name = c(&format!("ffi/paths-{round}"));
        unsafe {
            assert_eq!(
                ms_start(leader, name.as_ptr(), pw.as_ptr(), c("code").as_ptr()),
                ms_status::MS_OK
            );
        }
        let mut v = 0u64;
        let mut next = |leader| {
            v += 1;
            publish(leader, &name, &format!("{{\"v\":{v}}}"));
            v
        };
        let follow = |abi: &mut Abi<Seen>| {
            let f = abi.client(&s.url);
            let seen = abi.keep(Seen::default());
            unsafe {
                assert_eq!(ms_set_callback(f, Some(on_event), seen), ms_status::MS_OK);
                assert_eq!(ms_connect(f, name.as_ptr(), pw.as_ptr()), ms_status::MS_OK);
            }
            (f, seen)
        };

        // Freed while states flow; its data right after ms_client_free.
        let (f, seen) = follow(&mut abi);
        let seq = next(leader);
        abi.get(seen).wait_state(seq);
        next(leader);
        abi.free(f);
        abi.release(seen);

        // The follow ended first, then the client freed.
        let (f, seen) = follow(&mut abi);
        let seq = next(leader);
        abi.get(seen).wait_state(seq);
        unsafe { assert_eq!(ms_disconnect(f, name.as_ptr()), ms_status::MS_OK) };
        next(leader);
        abi.free(f);
        abi.release(seen);

        // The callback replaced while states flow: the old data is freed
        // as soon as ms_set_callback returns; then cleared and set again.
        let (f, first) = follow(&mut abi);
        let seq = next(leader);
        abi.get(first).wait_state(seq);
        let second = abi.keep(Seen::default());
        next(leader);
        unsafe { assert_eq!(ms_set_callback(f, Some(on_event), second), ms_status::MS_OK) };
        abi.release(first);
        let seq = next(leader);
        abi.get(second).wait_state(seq);
        unsafe { assert_eq!(ms_set_callback(f, None, null_mut()), ms_status::MS_OK) };
        abi.release(second);
        next(leader);
        let third = abi.keep(Seen::default());
        unsafe { assert_eq!(ms_set_callback(f, Some(on_event), third), ms_status::MS_OK) };
        let seq = next(leader);
        abi.get(third).wait_state(seq);

        // Webdis killed: CONNECTION_LOST reaches the callback; the guard
        // then frees the clients, then the data.
        s.stop_webdis();
        abi.get(third).wait("CONNECTION_LOST", |e| {
            e.0 == ms_event_kind::MS_EVENT_CONNECTION_LOST
        });
        drop(abi);
        s.start_webdis();
    }
}

/// What the calls of `on_event_slow` did, and when; shared by the test
/// and the user data, so that it outlives the data.
#[derive(Default)]
struct Probe {
    /// Calls begun, calls returned.
    calls: AtomicUsize,
    finished: AtomicUsize,
    /// A call is between its first and last access of the user data.
    running: AtomicBool,
    /// Set once the call that ends the callback has returned.
    ended: AtomicBool,
    /// Calls that began after that.
    late: AtomicUsize,
    seqs: Mutex<Vec<u64>>,
}

/// The user data of `on_event_slow`. `last_seq` is written by every call
/// without synchronisation of its own, before and after its sleep: freed
/// while a call runs, ThreadSanitizer (`make stress-ffi-tsan`),
/// AddressSanitizer and valgrind report the access.
struct Slow {
    probe: Arc<Probe>,
    last_seq: std::cell::UnsafeCell<u64>,
}

// SAFETY: `last_seq` is only written by the callback, whose calls never
// overlap (one dispatcher thread), and read by no one.
unsafe impl Sync for Slow {}

/// A callback slow enough (3 ms a call) to be running, states flowing,
/// whenever its follow is ended from another thread.
unsafe extern "C" fn on_event_slow(event: *const ms_event, user_data: *mut c_void) {
    let data = &*(user_data as *const Slow);
    let p = &*data.probe;
    p.running.store(true, Ordering::SeqCst);
    if p.ended.load(Ordering::SeqCst) {
        p.late.fetch_add(1, Ordering::SeqCst);
    }
    p.calls.fetch_add(1, Ordering::SeqCst);
    *data.last_seq.get() = (*event).seq;
    if (*event).kind == ms_event_kind::MS_EVENT_STATE {
        p.seqs.lock().unwrap().push((*event).seq);
    }
    std::thread::sleep(Duration::from_millis(3));
    *data.last_seq.get() = (*event).seq;
    p.finished.fetch_add(1, Ordering::SeqCst);
    p.running.store(false, Ordering::SeqCst);
}

/// Publishes a new state of `name` every millisecond from its own thread
/// until dropped (which joins it: declared after the `Abi` guard, it ends
/// before the leader is freed, on every path).
struct Publisher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

struct SendClient(*mut ms_client);
// SAFETY: the client is used by the publisher thread alone until joined.
unsafe impl Send for SendClient {}

impl Publisher {
    fn start(leader: *mut ms_client, name: &CStr) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let (leader, name, flag) = (SendClient(leader), name.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let leader = leader;
            let mut v = 0u64;
            while !flag.load(Ordering::SeqCst) {
                v += 1;
                let state = format!("{{\"v\":{v}}}");
                let st = unsafe {
                    ms_publish(
                        leader.0,
                        name.as_ptr(),
                        state.as_ptr() as *const c_char,
                        state.len(),
                    )
                };
                assert_eq!(st, ms_status::MS_OK);
                std::thread::sleep(Duration::from_millis(1));
            }
            v
        });
        Publisher {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let published = t.join();
            if !std::thread::panicking() {
                assert!(published.unwrap() > 0, "the publisher published");
            }
        }
    }
}

/// The three ways to end a callback, each called from the test's thread
/// while the callback runs on the library's: ms_disconnect (the follow
/// ends), ms_set_callback(NULL) and ms_client_free. Each must return only
/// once the running call has returned, and no call may begin afterwards.
/// The user data is freed as soon as the rule of ms_set_callback allows
/// (under `make stress-ffi-tsan`, `make test-ffi-asan` and valgrind a call
/// touching it afterwards is reported). 4 times each per `MS_FFI_ROUNDS`
/// (default 1); a few seconds.
#[test]
fn callbacks_running_while_ended_from_another_thread() {
    #[derive(Clone, Copy, Debug)]
    enum End {
        Disconnect,
        ClearCallback,
        FreeClient,
    }
    let rounds: usize = std::env::var("MS_FFI_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let s = Servers::start();
    let pw = c("pw");
    let name = c("ffi/ended-while-running");
    let mut abi = Abi::<Slow>::new();
    let leader = abi.client(&s.url);
    unsafe {
        assert_eq!(
            ms_start(leader, name.as_ptr(), pw.as_ptr(), c("code").as_ptr()),
            ms_status::MS_OK
        );
    }
    let publisher = Publisher::start(leader, &name);
    for i in 0..4 * rounds {
        for end in [End::Disconnect, End::ClearCallback, End::FreeClient] {
            let f = abi.client(&s.url);
            let probe = Arc::new(Probe::default());
            let p = abi.keep(Slow {
                probe: probe.clone(),
                last_seq: 0.into(),
            });
            unsafe {
                assert_eq!(ms_set_callback(f, Some(on_event_slow), p), ms_status::MS_OK);
                assert_eq!(ms_connect(f, name.as_ptr(), pw.as_ptr()), ms_status::MS_OK);
            }
            // States flow; catch a call in the middle (it lasts 3 ms).
            let deadline = Instant::now() + T;
            while !(probe.calls.load(Ordering::SeqCst) >= 2 && probe.running.load(Ordering::SeqCst))
            {
                assert!(
                    Instant::now() < deadline,
                    "{end:?} #{i}: no callback running within {T:?}"
                );
                std::thread::yield_now();
            }
            // Call number `begun` began before the ending call below.
            let begun = probe.calls.load(Ordering::SeqCst);
            match end {
                End::Disconnect => unsafe {
                    assert_eq!(ms_disconnect(f, name.as_ptr()), ms_status::MS_OK)
                },
                End::ClearCallback => unsafe {
                    assert_eq!(ms_set_callback(f, None, null_mut()), ms_status::MS_OK)
                },
                End::FreeClient => abi.free(f),
            }
            // The user data goes as soon as the rule of ms_set_callback
            // allows: right after ms_set_callback(NULL) or ms_client_free
            // returns; after ms_disconnect, only once the client is freed
            // (the callback is still set).
            match end {
                End::Disconnect => {}
                End::ClearCallback | End::FreeClient => abi.release(p),
            }
            let (finished, running) = (
                probe.finished.load(Ordering::SeqCst),
                probe.running.load(Ordering::SeqCst),
            );
            assert!(
                finished >= begun && !running,
                "{end:?} #{i}: returned while its callback was still running \
                 (call {begun} had begun, {finished} returned, one running: {running}; \
                 calls now {})",
                probe.calls.load(Ordering::SeqCst)
            );
            probe.ended.store(true, Ordering::SeqCst);
            let calls = probe.calls.load(Ordering::SeqCst);
            // States keep flowing to the other clients for a while.
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(
                (
                    probe.calls.load(Ordering::SeqCst),
                    probe.late.load(Ordering::SeqCst)
                ),
                (calls, 0),
                "{end:?} #{i}: a callback ran after it returned"
            );
            let seqs = probe.seqs.lock().unwrap().clone();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "{end:?} #{i}: states out of order: {}",
                list_excerpt(&seqs)
            );
            match end {
                End::Disconnect => {
                    abi.free(f);
                    abi.release(p);
                }
                End::ClearCallback => abi.free(f),
                End::FreeClient => {}
            }
        }
    }
    drop(publisher);
    drop(abi);
}
