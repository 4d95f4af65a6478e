//! The C boundary: NULLs, bad UTF-8, limits and messages, through the
//! exported functions themselves.

mod common;

use common::*;
use missionstream::ffi::*;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::Mutex;
use std::time::Duration;

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

/// (kind, stream, data, seq, len) of each event.
type SeenEvent = (ms_event_kind, String, Option<String>, u64, usize);

struct Seen {
    events: Mutex<Vec<SeenEvent>>,
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

#[test]
fn c_callback_and_list_through_the_abi() {
    let s = Servers::start();
    unsafe {
        let url = c(&s.url);
        let mut leader: *mut ms_client = null_mut();
        let mut follower: *mut ms_client = null_mut();
        assert_eq!(ms_client_new(url.as_ptr(), &mut leader), ms_status::MS_OK);
        assert_eq!(ms_client_new(url.as_ptr(), &mut follower), ms_status::MS_OK);
        let seen = Box::new(Seen {
            events: Mutex::new(Vec::new()),
        });
        let seen_ptr = &*seen as *const Seen as *mut c_void;
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
        let state = "{\"a\":\"x\\u0000y ✈\"}".as_bytes();
        assert_eq!(
            ms_publish(
                leader,
                name.as_ptr(),
                state.as_ptr() as *const c_char,
                state.len()
            ),
            ms_status::MS_OK
        );
        assert_eq!(ms_flush(leader, name.as_ptr(), 10_000), ms_status::MS_OK);
        wait_until(Duration::from_secs(10), || {
            seen.events.lock().unwrap().len() >= 2
        });
        {
            let ev = seen.events.lock().unwrap();
            assert_eq!(ev[0].0, ms_event_kind::MS_EVENT_STATE);
            assert_eq!(
                (ev[0].1.as_str(), ev[0].2.as_deref(), ev[0].3),
                ("ffi/plan.v1", Some("{}"), 0)
            );
            assert_eq!(ev[1].2.as_deref(), Some("{\"a\":\"x\\u0000y ✈\"}"));
            assert_eq!((ev[1].3, ev[1].4), (1, state.len()));
        }
        let mut list: *mut ms_stream_info = null_mut();
        let mut count = 0usize;
        assert_eq!(ms_list(leader, &mut list, &mut count), ms_status::MS_OK);
        assert_eq!(count, 1);
        let info = &*list;
        assert_eq!(CStr::from_ptr(info.name).to_str().unwrap(), "ffi/plan.v1");
        assert_eq!((info.seq, info.followers), (1, 1));
        ms_list_free(list, count);

        assert_eq!(ms_stop(leader, name.as_ptr()), ms_status::MS_OK);
        wait_until(Duration::from_secs(10), || {
            seen.events
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.0 == ms_event_kind::MS_EVENT_ENDED)
        });
        assert_eq!(ms_list(leader, &mut list, &mut count), ms_status::MS_OK);
        assert_eq!((count, list.is_null()), (0, true));
        ms_list_free(list, count);
        assert_eq!(
            ms_set_callback(follower, None, null_mut()),
            ms_status::MS_OK
        );
        ms_client_free(follower);
        ms_client_free(leader);
    }
}
