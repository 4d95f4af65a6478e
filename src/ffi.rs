//! The C ABI. This module only converts types and guards the boundary:
//! every exported function catches panics (returning MS_ERR_INTERNAL), turns
//! NULL and bad UTF-8 into MS_ERR_INVALID_ARGUMENT, and records a message
//! for `ms_last_error()`.

#![allow(non_camel_case_types)]

use crate::client::{Client, StreamInfo};
pub use crate::dispatch::ms_event_kind;
use crate::dispatch::{Callback, Event};
pub use crate::error::ms_status;
use crate::error::{Error, Result, Status};
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// A client of one Webdis endpoint. Opaque; thread-safe: every function
/// may be called on one client from any thread at the same time.
pub struct ms_client {
    inner: Client,
}

impl ms_client {
    /// The Rust client behind a C handle (for the benchmark's switches).
    #[doc(hidden)]
    pub fn client(&self) -> &Client {
        &self.inner
    }
}

/// An event, lent to the callback. Every pointer in it is valid only
/// during the callback: copy what you keep.
#[repr(C)]
pub struct ms_event {
    /// What happened.
    pub kind: ms_event_kind,
    /// The stream's name, NUL-terminated.
    pub stream: *const c_char,
    /// MS_EVENT_STATE: the state, NUL-terminated, `len` bytes before the
    /// NUL; otherwise NULL.
    pub data: *const c_char,
    /// MS_EVENT_STATE: length of `data` in bytes; otherwise 0.
    pub len: usize,
    /// MS_EVENT_STATE: the state's sequence number (0 for the initial `{}`,
    /// then +1 per stored state); otherwise 0.
    pub seq: u64,
    /// MS_EVENT_CONNECTION_LOST, MS_EVENT_PUBLISH_FAILED: the cause;
    /// otherwise MS_OK.
    pub status: ms_status,
}

/// The event callback. Runs on a library thread; callbacks of one client
/// never run concurrently. It may call any ms_* function except
/// ms_client_free. `user_data` is the pointer given to ms_set_callback;
/// the caller owns its thread-safety, and keeps it valid as long as the
/// callback may run (see ms_set_callback). Latest wins here too: while a
/// stream's MS_EVENT_STATE waits for the callback, a newer state of that
/// stream replaces it (memory stays bounded however slow the callback);
/// other events are never dropped.
pub type ms_callback = Option<unsafe extern "C" fn(event: *const ms_event, user_data: *mut c_void)>;

/// A live stream, as returned by ms_list. Never carries secrets.
#[repr(C)]
pub struct ms_stream_info {
    /// The stream's name, NUL-terminated UTF-8.
    pub name: *mut c_char,
    /// Sequence number of the current state.
    pub seq: u64,
    /// Number of subscribed followers.
    pub followers: u32,
    /// Unix time in ms of the last stored state, on the caller's clock:
    /// Redis stores it on its own clock, and the library moves it onto
    /// this machine's wall clock (as long before the local time the list
    /// was read as it was before Redis' time then), so that comparing it
    /// with this machine's clock shows no skew between the two.
    pub updated_ms: i64,
}

/// A live stream with its leader's presence, as returned by
/// ms_list_presence. Never carries secrets.
#[repr(C)]
pub struct ms_stream_presence {
    /// Name, seq, followers and time of the last stored state, as ms_list
    /// returns them.
    pub info: ms_stream_info,
    /// Unix time in ms when the leader was last heard: it started or
    /// reconnected the stream, published, or sent a heartbeat; 0 if not
    /// known. On the caller's clock, like `updated_ms`: how long ago it
    /// was is measured by Redis, so a local clock that is off does not
    /// change it.
    pub heard_ms: i64,
    /// The heartbeat interval the leader announced, in ms. A leader not
    /// heard for 3 intervals is offline (followers get
    /// MS_EVENT_LEADER_OFFLINE then).
    pub heartbeat_ms: u32,
}

/// A status passed in from C: any integer, checked before use.
#[repr(transparent)]
pub struct StatusArg(pub u32);

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: String) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f` at the boundary: converts its result to a status and records
/// the message of a failure (or of a caught panic).
fn guard(function: &str, f: impl FnOnce() -> Result<()>) -> ms_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Status::MS_OK,
        Ok(Err(e)) => {
            set_last_error(format!("{function}: {}", e.message));
            e.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(format!(
                "{function}: internal error (a bug in missionstream, please report it): {what}"
            ));
            Status::MS_ERR_INTERNAL
        }
    }
}

/// Borrows a C string argument.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string valid for the call.
unsafe fn arg_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    CStr::from_ptr(ptr).to_str().map_err(|e| {
        Error::invalid(format!(
            "{what} is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })
}

/// Borrows the client.
///
/// # Safety
/// `client` is NULL or a pointer returned by ms_client_new and not freed.
unsafe fn arg_client<'a>(client: *const ms_client) -> Result<&'a Client> {
    client
        .as_ref()
        .map(|c| &c.inner)
        .ok_or_else(|| Error::invalid("client is NULL"))
}

/// The library's version, e.g. "0.1.0". Static; never NULL.
#[no_mangle]
pub extern "C" fn ms_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// The name of a status, e.g. "MS_ERR_NOT_FOUND"; "MS_UNKNOWN_STATUS" for
/// a value that is not a status. Static; never NULL.
#[no_mangle]
pub extern "C" fn ms_status_name(status: StatusArg) -> *const c_char {
    match Status::from_raw(status.0) {
        Some(s) => s.name_with_nul().as_ptr() as *const c_char,
        None => c"MS_UNKNOWN_STATUS".as_ptr(),
    }
}

/// 1 when a call that failed with `status` may succeed if made again
/// later, 0 otherwise (MS_OK and values that are not statuses included).
/// The transient statuses are MS_ERR_TIMEOUT, MS_ERR_UNAVAILABLE,
/// MS_ERR_PROTOCOL, MS_ERR_SERVER and MS_ERR_THROTTLED: the library's own
/// threads retry exactly these with backoff (a leader keeps its newest
/// state, a follower reconnects); any other status ends a lead or a
/// follow.
#[no_mangle]
pub extern "C" fn ms_status_is_transient(status: StatusArg) -> c_int {
    Status::from_raw(status.0).is_some_and(Status::is_transient) as c_int
}

/// This thread's last failure: what failed, why, and what to do;
/// "" if no call on this thread has failed. Valid until the next failing
/// call on this thread. Never NULL. Successful calls leave it as it is.
#[no_mangle]
pub extern "C" fn ms_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Creates a client of the Webdis at `webdis_url`,
/// `http(s)://[user:pass@]host[:port][/prefix]` (user:pass, percent-decoded,
/// becomes HTTP basic auth). Does no I/O. On success writes the client to
/// `*out`; free it with ms_client_free.
///
/// A replicated deployment (a Redis primary and its replicas under
/// Sentinel, one Webdis per Redis node) is given as the comma-separated
/// URLs of every node's Webdis, each with its own user:pass and prefix,
/// the primary's first if known. Writes then go to whichever node's Redis
/// is the primary (found from the replies and followed across failovers),
/// followers subscribe on the replicas, and list counts the followers of
/// every node.
///
/// @return MS_OK, or MS_ERR_INVALID_ARGUMENT (NULL, a bad URL, or in a
/// list an empty, malformed or repeated entry, named in the message).
///
/// # Safety
/// `webdis_url` is NULL or a NUL-terminated string; `out` is NULL or
/// points to writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn ms_client_new(
    webdis_url: *const c_char,
    out: *mut *mut ms_client,
) -> ms_status {
    guard("ms_client_new", || {
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        let url = arg_str(webdis_url, "webdis_url")?;
        let client = Client::new(url)?;
        *out = Box::into_raw(Box::new(ms_client { inner: client }));
        Ok(())
    })
}

/// Frees a client. First delivers the pending state of each stream it
/// leads (each bounded by the request timeout), then ends every follow and
/// the callback thread. Led streams are kept in Redis, so that a leader can
/// ms_reconnect later. NULL is ignored. Must not be called from a callback.
///
/// # Safety
/// `client` is NULL or a pointer from ms_client_new not freed yet; no
/// other call on it may be running or start afterwards.
#[no_mangle]
pub unsafe extern "C" fn ms_client_free(client: *mut ms_client) {
    if client.is_null() {
        return;
    }
    let _ = guard("ms_client_free", || {
        drop(Box::from_raw(client));
        Ok(())
    });
}

/// Sets the timeout of each request to Webdis, in ms (1 to 3600000;
/// default 10000). Applies at once, to every stream of the client. A
/// response that has not begun after a third of it (at least 1 s) counts
/// as lost and the request is sent again on a new connection, within the
/// timeout (every call is safe to repeat; Webdis 0.1.9 loses responses).
///
/// # Safety
/// `client` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn ms_client_set_timeout(
    client: *mut ms_client,
    timeout_ms: u32,
) -> ms_status {
    guard("ms_client_set_timeout", || {
        arg_client(client)?.set_timeout(timeout_ms)
    })
}

/// Sets the time to live, in seconds, of streams this client starts or
/// reconnects afterwards: a stream whose leader is gone disappears after
/// it; while led, publishes and heartbeats keep it alive. 0 (default):
/// never expire. Must be at least two heartbeat intervals.
///
/// # Safety
/// `client` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn ms_client_set_stream_ttl(
    client: *mut ms_client,
    seconds: u32,
) -> ms_status {
    guard("ms_client_set_stream_ttl", || {
        arg_client(client)?.set_stream_ttl(seconds)
    })
}

/// Sets the leader's heartbeat interval in ms (50 to 3600000; default
/// 5000; at most half the stream TTL, if one is set). Followers report
/// LEADER_OFFLINE after 3 silent intervals.
///
/// # Safety
/// `client` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn ms_client_set_heartbeat(
    client: *mut ms_client,
    interval_ms: u32,
) -> ms_status {
    guard("ms_client_set_heartbeat", || {
        arg_client(client)?.set_heartbeat(interval_ms)
    })
}

/// Sets the PBKDF2-HMAC-SHA256 iterations of the streams this client
/// starts from now on (default 600,000, OWASP's current figure; 100,000
/// to 10,000,000, the bounds the functions accept, else
/// MS_ERR_INVALID_ARGUMENT). Every start derives two keys and every first
/// connect one, each costing about 0.1 s of one core at the default: raise
/// it as hardware gets faster; lower it only where start and connect
/// latency matter more than offline guessing of a leaked record (test
/// suites, small devices), with long random secrets. Streams already
/// started keep theirs; followers use the stream's own.
///
/// # Safety
/// `client` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn ms_client_set_kdf_iterations(
    client: *mut ms_client,
    iterations: u32,
) -> ms_status {
    guard("ms_client_set_kdf_iterations", || {
        arg_client(client)?.set_kdf_iterations(iterations)
    })
}

/// Sets the trust anchors of `https://` URLs: the certificates of the PEM
/// file `path` (one or more `-----BEGIN CERTIFICATE-----` blocks, e.g. the
/// certificate of a mission network's own certificate authority) replace
/// the bundled web roots, which are the default. The file is read during
/// this call; a file that cannot be read, or holds no certificate or one
/// that cannot be a trust anchor, fails with MS_ERR_INVALID_ARGUMENT
/// naming the path and the cause, and changes nothing.
///
/// Applies to the client's next request and every connection it opens
/// afterwards, for all its streams (those already led or followed too):
/// idle connections opened under the trust it replaces are not used
/// again; a subscription already streaming is kept until it ends. Set it
/// right after ms_client_new.
/// No effect on an `http://` URL.
///
/// With `https://`, a server whose certificate is not issued by a trusted
/// authority ("certificate not trusted"), is not valid for the URL's host
/// ("host name mismatch"), or has expired fails a call at once with
/// MS_ERR_UNAVAILABLE; a port that does not speak TLS fails it with
/// MS_ERR_PROTOCOL, as does an `http://` URL pointed at a TLS port.
///
/// # Safety
/// `client` is NULL or a live client; `path` is NULL or a NUL-terminated
/// file path (bytes as the operating system takes them).
#[no_mangle]
pub unsafe extern "C" fn ms_client_set_tls_ca_file(
    client: *mut ms_client,
    path: *const c_char,
) -> ms_status {
    guard("ms_client_set_tls_ca_file", || {
        let client = arg_client(client)?;
        if path.is_null() {
            return Err(Error::invalid("path is NULL"));
        }
        let bytes = CStr::from_ptr(path).to_bytes();
        if bytes.is_empty() {
            return Err(Error::invalid("path is empty"));
        }
        #[cfg(unix)]
        let path = std::path::Path::new(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes),
        );
        #[cfg(not(unix))]
        let path = std::path::Path::new(arg_str(path, "path")?);
        client.set_tls_ca_file(path)
    })
}

struct UserData(*mut c_void);
// SAFETY: the pointer is only handed back to the caller's callback; the
// caller owns its thread-safety (documented on ms_set_callback).
unsafe impl Send for UserData {}
unsafe impl Sync for UserData {}

/// Sets the callback that receives the client's events (NULL: none), with
/// `user_data` passed back to it. Called outside a callback, it returns
/// only when the previous callback is no longer running; the previous
/// callback is never called again. May be called from a callback.
///
/// Lifetime of `user_data`: it must stay valid until this callback is
/// replaced or cleared (a later ms_set_callback on this client has
/// returned; called from the callback itself, once that callback has
/// returned too) or the client is freed (ms_client_free has returned).
/// Until then the callback may run on a library thread at any moment
/// with `user_data`, also when nothing is being published
/// (MS_EVENT_CONNECTION_LOST when Webdis goes away, for one). To free it:
/// ms_set_callback(client, NULL, NULL) or ms_client_free(client) first,
/// then the data.
///
/// # Safety
/// `client` is NULL or a live client; `cb` is NULL or a function that
/// stays callable while set; `user_data` is the caller's, used from the
/// library's thread, and stays valid as said above.
#[no_mangle]
pub unsafe extern "C" fn ms_set_callback(
    client: *mut ms_client,
    cb: ms_callback,
    user_data: *mut c_void,
) -> ms_status {
    guard("ms_set_callback", || {
        let client = arg_client(client)?;
        let callback: Option<Callback> = cb.map(|f| {
            let ud = UserData(user_data);
            Arc::new(move |event: &Event| {
                let (data, len) = match &event.state {
                    Some(s) => (s.as_ptr() as *const c_char, s.as_str().len()),
                    None => (std::ptr::null(), 0),
                };
                let e = ms_event {
                    kind: event.kind,
                    stream: event.stream.as_ptr(),
                    data,
                    len,
                    seq: event.seq,
                    status: event.status,
                };
                let ud = &ud;
                // SAFETY: the caller gave this function and pointer.
                unsafe { f(&e, ud.0) }
            }) as Callback
        });
        client.set_callback(callback);
        Ok(())
    })
}

/// Creates stream `name` (1-256 bytes of UTF-8, no control characters)
/// with `password` (0-1024 bytes; followers need it) and `leader_code`
/// (1-1024 bytes; a leader needs it to reconnect or stop). Its state is
/// `{}` with seq 0, and this client now leads it.
///
/// @return MS_OK, MS_ERR_EXISTS (the name is taken), MS_ERR_ALREADY,
/// MS_ERR_INVALID_ARGUMENT, or a transport/server status.
///
/// # Safety
/// `client` is NULL or a live client; strings are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ms_start(
    client: *mut ms_client,
    name: *const c_char,
    password: *const c_char,
    leader_code: *const c_char,
) -> ms_status {
    guard("ms_start", || {
        let client = arg_client(client)?;
        client.start(
            arg_str(name, "name")?,
            arg_str(password, "password")?,
            arg_str(leader_code, "leader_code")?,
        )
    })
}

/// Takes up leading an existing stream (after a restart), checking its
/// password and leader code. The stored state is kept. The lead is taken
/// over: a client still leading the stream is refused from then on
/// (MS_EVENT_PUBLISH_FAILED with MS_ERR_NOT_LEADING; its lead ends).
///
/// @return MS_OK, MS_ERR_NOT_FOUND, MS_ERR_BAD_PASSWORD,
/// MS_ERR_BAD_LEADER_CODE, MS_ERR_THROTTLED (too many wrong secrets for
/// this stream: retry after the time the message names, at most a few
/// seconds), MS_ERR_ALREADY, MS_ERR_INVALID_ARGUMENT, or a
/// transport/server status.
///
/// # Safety
/// `client` is NULL or a live client; strings are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ms_reconnect(
    client: *mut ms_client,
    name: *const c_char,
    password: *const c_char,
    leader_code: *const c_char,
) -> ms_status {
    guard("ms_reconnect", || {
        let client = arg_client(client)?;
        client.reconnect(
            arg_str(name, "name")?,
            arg_str(password, "password")?,
            arg_str(leader_code, "leader_code")?,
        )
    })
}

/// Hands over the stream's new state (`len` bytes of UTF-8 at `state`, at
/// most 8 MiB; the bytes are copied) and returns at once, without network
/// I/O. The stream's publisher stores and broadcasts it; if states come
/// faster than Webdis round trips, intermediate ones are skipped, never
/// reordered. Failures are reported by MS_EVENT_PUBLISH_FAILED and ms_flush.
///
/// @return MS_OK, MS_ERR_NOT_LEADING, MS_ERR_TOO_LARGE,
/// MS_ERR_INVALID_ARGUMENT.
///
/// # Safety
/// `client` is NULL or a live client; `name` is NULL or NUL-terminated;
/// `state` is NULL or points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn ms_publish(
    client: *mut ms_client,
    name: *const c_char,
    state: *const c_char,
    len: usize,
) -> ms_status {
    guard("ms_publish", || {
        let client = arg_client(client)?;
        let name = arg_str(name, "name")?;
        if state.is_null() {
            return Err(Error::invalid("state is NULL"));
        }
        if len > crate::wire::protocol::MAX_STATE {
            return Err(Error::new(
                Status::MS_ERR_TOO_LARGE,
                format!(
                    "the state is {len} bytes; the limit is {} bytes (8 MiB)",
                    crate::wire::protocol::MAX_STATE
                ),
            ));
        }
        let bytes = std::slice::from_raw_parts(state as *const u8, len);
        client.publish(name, bytes)
    })
}

/// Waits up to `timeout_ms` until every state published on `name` before
/// the call is stored in Redis (or superseded by a stored newer one). It
/// polls for the first 0.25 ms (about a local round trip), then sleeps.
///
/// MS_OK is proof: it is returned only after a reply that names the
/// request of a publish of that state (or a newer one) said it is stored.
/// A reply Webdis wrote to the wrong connection is never taken for it.
///
/// @return MS_OK; the publish error (e.g. MS_ERR_UNAVAILABLE, or
/// MS_ERR_NOT_FOUND when the lead ended); MS_ERR_TIMEOUT;
/// MS_ERR_NOT_LEADING.
///
/// # Safety
/// `client` is NULL or a live client; `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ms_flush(
    client: *mut ms_client,
    name: *const c_char,
    timeout_ms: u32,
) -> ms_status {
    guard("ms_flush", || {
        let client = arg_client(client)?;
        client.flush(arg_str(name, "name")?, timeout_ms)
    })
}

/// Stops stream `name`: deletes it from Redis (record and list entry);
/// every follower gets MS_EVENT_ENDED, after the states stored before it
/// (a follower holds the end 250 ms for states the network delivers
/// late). Only the client leading it can.
///
/// @return MS_OK, MS_ERR_NOT_LEADING, MS_ERR_NOT_FOUND (already gone; the
/// lead ends too), or a transport/server status (the lead goes on).
///
/// # Safety
/// `client` is NULL or a live client; `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ms_stop(client: *mut ms_client, name: *const c_char) -> ms_status {
    guard("ms_stop", || {
        let client = arg_client(client)?;
        client.stop(arg_str(name, "name")?)
    })
}

/// Follows stream `name`: checks the password and subscribes. On MS_OK the
/// subscription is proven end to end (a probe published through Redis came
/// back on it) and the current state is already queued as the first
/// MS_EVENT_STATE (replaced by a newer one if that arrives before the
/// callback takes it); every newer state follows, in increasing seq.
///
/// @return MS_OK, MS_ERR_NOT_FOUND, MS_ERR_BAD_PASSWORD, MS_ERR_THROTTLED
/// (the 5th wrong password or leader code within a second locks the
/// stream's secret checks for 250 ms, doubling up to 4 s: retry after the
/// time the message names), MS_ERR_ALREADY, MS_ERR_INVALID_ARGUMENT, or a
/// transport/server status.
///
/// # Safety
/// `client` is NULL or a live client; strings are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ms_connect(
    client: *mut ms_client,
    name: *const c_char,
    password: *const c_char,
) -> ms_status {
    guard("ms_connect", || {
        let client = arg_client(client)?;
        client.connect(arg_str(name, "name")?, arg_str(password, "password")?)
    })
}

/// Ends following `name`. Returns within 500 ms even if Webdis hangs
/// (plus, when called outside a callback, the time a callback of that
/// stream already running takes to return); no event of that stream is
/// delivered after it returns (called from a callback, the running
/// callback is the last). After MS_EVENT_ENDED the
/// follow is already over and this returns MS_ERR_NOT_FOLLOWING.
///
/// # Safety
/// `client` is NULL or a live client; `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ms_disconnect(client: *mut ms_client, name: *const c_char) -> ms_status {
    guard("ms_disconnect", || {
        let client = arg_client(client)?;
        client.disconnect(arg_str(name, "name")?)
    })
}

/// Lists the live streams, sorted by name. On success writes an array of
/// `*count` records to `*out` (NULL when there are none); free it with
/// ms_list_free(*out, *count).
///
/// # Safety
/// `client` is NULL or a live client; `out` and `count` are NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ms_list(
    client: *mut ms_client,
    out: *mut *mut ms_stream_info,
    count: *mut usize,
) -> ms_status {
    guard("ms_list", || {
        let client = arg_client(client)?;
        if out.is_null() || count.is_null() {
            return Err(Error::invalid("out or count is NULL"));
        }
        let streams = client.list()?;
        let n = streams.len();
        let records: Box<[ms_stream_info]> = streams
            .into_iter()
            .map(|s: StreamInfo| ms_stream_info {
                name: CString::new(s.name).unwrap_or_default().into_raw(),
                seq: s.seq,
                followers: s.followers,
                updated_ms: s.updated_ms,
            })
            .collect();
        *out = if n == 0 {
            std::ptr::null_mut()
        } else {
            Box::into_raw(records) as *mut ms_stream_info
        };
        *count = n;
        Ok(())
    })
}

/// Like ms_list, with each leader's presence: when it was last heard and
/// the heartbeat interval it announced, so that a caller tells a stream
/// whose leader is there from one whose leader went away (not heard for 3
/// intervals). Writes an array of `*count` records to `*out` (NULL when
/// there are none); free it with ms_list_presence_free(*out, *count).
///
/// # Safety
/// `client` is NULL or a live client; `out` and `count` are NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ms_list_presence(
    client: *mut ms_client,
    out: *mut *mut ms_stream_presence,
    count: *mut usize,
) -> ms_status {
    guard("ms_list_presence", || {
        let client = arg_client(client)?;
        if out.is_null() || count.is_null() {
            return Err(Error::invalid("out or count is NULL"));
        }
        let streams = client.list()?;
        let n = streams.len();
        let records: Box<[ms_stream_presence]> = streams
            .into_iter()
            .map(|s: StreamInfo| ms_stream_presence {
                info: ms_stream_info {
                    name: CString::new(s.name).unwrap_or_default().into_raw(),
                    seq: s.seq,
                    followers: s.followers,
                    updated_ms: s.updated_ms,
                },
                heard_ms: s.heard_ms,
                heartbeat_ms: s.heartbeat_ms,
            })
            .collect();
        *out = if n == 0 {
            std::ptr::null_mut()
        } else {
            Box::into_raw(records) as *mut ms_stream_presence
        };
        *count = n;
        Ok(())
    })
}

/// Frees an array returned by ms_list_presence, with the count it
/// returned. NULL is ignored.
///
/// # Safety
/// `list` is NULL or an array from ms_list_presence with its `count`, not
/// freed yet.
#[no_mangle]
pub unsafe extern "C" fn ms_list_presence_free(list: *mut ms_stream_presence, count: usize) {
    if list.is_null() {
        return;
    }
    let _ = guard("ms_list_presence_free", || {
        let records = Box::from_raw(std::ptr::slice_from_raw_parts_mut(list, count));
        for r in records.iter() {
            if !r.info.name.is_null() {
                drop(CString::from_raw(r.info.name));
            }
        }
        Ok(())
    });
}

/// Frees an array returned by ms_list, with the count it returned. NULL
/// is ignored.
///
/// # Safety
/// `list` is NULL or an array from ms_list with its `count`, not freed yet.
#[no_mangle]
pub unsafe extern "C" fn ms_list_free(list: *mut ms_stream_info, count: usize) {
    if list.is_null() {
        return;
    }
    let _ = guard("ms_list_free", || {
        let records = Box::from_raw(std::ptr::slice_from_raw_parts_mut(list, count));
        for r in records.iter() {
            if !r.name.is_null() {
                drop(CString::from_raw(r.name));
            }
        }
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        // SAFETY: ms_last_error never returns NULL.
        unsafe { CStr::from_ptr(ms_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_internal_with_a_message() {
        let status = guard("ms_test", || panic!("boom {}", 42));
        assert_eq!(status, Status::MS_ERR_INTERNAL);
        assert!(last().starts_with("ms_test: internal error"), "{}", last());
        assert!(last().contains("boom 42"), "{}", last());
        let status = guard("ms_test", || std::panic::panic_any(7u8));
        assert_eq!(status, Status::MS_ERR_INTERNAL);
        assert!(last().contains("unknown panic"), "{}", last());
    }

    #[test]
    fn errors_keep_their_status_and_name_the_function() {
        let status = guard("ms_test", || {
            Err(Error::new(Status::MS_ERR_TIMEOUT, "slow"))
        });
        assert_eq!(status, Status::MS_ERR_TIMEOUT);
        assert_eq!(last(), "ms_test: slow");
        // A NUL in a message cannot cut it short.
        guard("ms_test", || Err(Error::invalid("a\0b")));
        assert_eq!(last(), "ms_test: a b");
        // Success leaves the last failure in place.
        assert_eq!(guard("ms_test", || Ok(())), Status::MS_OK);
        assert_eq!(last(), "ms_test: a b");
    }
}
