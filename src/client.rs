//! The client: one Webdis endpoint, the streams it leads and follows, and
//! the dispatcher that calls the user's callback.
//!
//! Threads: the caller's threads run start/reconnect/connect/stop/list
//! (blocking HTTP on a shared connection pool; a follow's password is
//! checked there too); the led and followed streams are driven by one
//! network thread and four request workers (runtime/), started with the
//! first lead or follow, whatever their number; one dispatcher thread
//! calls the callback. Dropping the client delivers pending states (bounded by the
//! request timeout), ends every follow and stops the dispatcher.

use crate::dispatch::{Callback, Dispatcher};
use crate::error::{Error, Kind, Result, Status};
use crate::kdf::{self, KeyCache, Secret};
use crate::net::nodes::{Answered, Endpoints, Nodes};
use crate::runtime::Runtime;
use crate::session::follower::Follow;
use crate::session::leader::{Lead, LeadIdentity};
use crate::session::{key_of, params_of, Config, EndHook, Hooks};
use crate::util::{lock, random_hex};
use crate::wire::functions::{Call, Connected, ListPage, SubscriberPage};
use crate::wire::protocol;
use serde_json::Value;
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

type Registry<T> = Arc<Mutex<HashMap<String, T>>>;

/// A lead or follow session, known by its id.
pub trait Session {
    fn session(&self) -> u64;
}

impl Session for Lead {
    fn session(&self) -> u64 {
        self.session
    }
}

impl Session for Follow {
    fn session(&self) -> u64 {
        self.session
    }
}

fn end_hook<T: Session + Send + Sync + 'static>(registry: &Registry<Arc<T>>) -> EndHook {
    let registry = Arc::downgrade(registry);
    Arc::new(move |session, name: &CString| {
        if let Some(registry) = registry.upgrade() {
            let mut m = lock(&registry);
            let name = name.to_str().unwrap_or("");
            if m.get(name).is_some_and(|s| s.session() == session) {
                m.remove(name);
            }
        }
    })
}

/// A live stream as listed (one entry of ms_list).
pub use crate::wire::functions::ListEntry as StreamInfo;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

pub struct Client {
    config: Arc<Config>,
    /// Connections for the calls made on the caller's threads.
    control: Nodes,
    leads: Registry<Arc<Lead>>,
    follows: Registry<Arc<Follow>>,
    /// Follows beside those of `follows` (`connect_member`), by session.
    members: Mutex<HashMap<u64, Arc<Follow>>>,
    hooks: Hooks,
    /// Keys derived from passwords and leader codes (the KDF is slow on
    /// purpose; reconnects need not pay it again).
    keys: Arc<KeyCache>,
    /// The reactor and request workers that drive the leads and follows,
    /// started with the first one.
    runtime: once_cell::sync::OnceCell<Runtime>,
}

fn c_name(name: &str) -> Arc<CString> {
    // Names are checked: no control characters, so no NUL.
    Arc::new(CString::new(name).unwrap_or_default())
}

impl Client {
    /// A client of the Webdis at `url`, or of the comma-separated Webdis
    /// URLs of a replicated deployment (one per Redis node); no I/O.
    pub fn new(url: &str) -> Result<Client> {
        let endpoints = Arc::new(Endpoints::parse(url)?);
        let dispatcher = Dispatcher::new().map_err(|e| {
            Error::new(
                Status::MS_ERR_INTERNAL,
                format!("cannot start a thread: {e}"),
            )
        })?;
        let leads: Registry<Arc<Lead>> = Arc::default();
        let follows: Registry<Arc<Follow>> = Arc::default();
        let hooks = Hooks {
            dispatcher,
            lead_ended: end_hook(&leads),
            follow_ended: end_hook(&follows),
            delta_resyncs: Arc::default(),
        };
        Ok(Client {
            config: Arc::new(Config::default()),
            control: Nodes::new(endpoints),
            leads,
            follows,
            members: Mutex::default(),
            hooks,
            keys: Arc::new(KeyCache::new()?),
            runtime: once_cell::sync::OnceCell::new(),
        })
    }

    /// How many times this client's followers read the snapshot because
    /// deltas could not be applied (a base that did not come in time, or
    /// a delta that did not verify). For benchmarks and tests.
    pub fn delta_snapshot_reads(&self) -> u64 {
        self.hooks.delta_resyncs.load(Ordering::Relaxed)
    }

    /// Turns deltas off (every state sent in full) or on again for the
    /// streams this client leads. For benchmarks comparing both in one run.
    #[doc(hidden)]
    pub fn set_deltas(&self, enabled: bool) {
        self.config.deltas.store(enabled, Ordering::Relaxed);
    }

    /// PBKDF2 iterations of the streams this client starts from now on
    /// (default 600,000; 100,000 to 10,000,000, the bounds the functions
    /// accept). For raising the cost as hardware gets faster, and for
    /// test suites and small devices that need starts and connects to be
    /// quick (at a lower cost for whoever guesses). Streams already
    /// started keep theirs; followers use the stream's own.
    pub fn set_kdf_iterations(&self, iterations: u32) -> Result<()> {
        kdf::check_iterations(iterations)?;
        self.config
            .kdf_iterations
            .store(iterations, Ordering::Relaxed);
        Ok(())
    }

    /// Timeout of each request, in ms (1 ms to 1 hour).
    pub fn set_timeout(&self, timeout_ms: u32) -> Result<()> {
        if timeout_ms == 0 || timeout_ms > 3_600_000 {
            return Err(Error::invalid(format!(
                "the timeout must be 1 to 3600000 ms, not {timeout_ms}"
            )));
        }
        self.config.timeout_ms.store(timeout_ms, Ordering::Relaxed);
        Ok(())
    }

    /// Time to live of streams this client starts or reconnects, in
    /// seconds; 0 (default) never expires.
    pub fn set_stream_ttl(&self, seconds: u32) -> Result<()> {
        if seconds > 0 && (seconds as u64) * 1000 < 2 * self.config.heartbeat().as_millis() as u64 {
            return Err(Error::invalid(format!(
                "a stream TTL of {seconds} s is shorter than two heartbeat intervals; the stream would expire while led"
            )));
        }
        self.config.stream_ttl_s.store(seconds, Ordering::Relaxed);
        Ok(())
    }

    /// The leader's heartbeat interval in ms (50 ms to 1 hour).
    pub fn set_heartbeat(&self, interval_ms: u32) -> Result<()> {
        if !(50..=3_600_000).contains(&interval_ms) {
            return Err(Error::invalid(format!(
                "the heartbeat interval must be 50 to 3600000 ms, not {interval_ms}"
            )));
        }
        let ttl_ms = self.config.stream_ttl_s() as u64 * 1000;
        if ttl_ms > 0 && 2 * interval_ms as u64 > ttl_ms {
            return Err(Error::invalid(format!(
                "a heartbeat every {interval_ms} ms is longer than half the stream TTL; the stream would expire while led"
            )));
        }
        self.config
            .heartbeat_ms
            .store(interval_ms, Ordering::Relaxed);
        Ok(())
    }

    /// Trusts only the certificates of the PEM file at `path` for
    /// `https://` from now on, instead of the bundled web roots: the next
    /// request and every connection opened afterwards (by any stream of
    /// the client) check the server's certificate against them; idle
    /// connections opened before are not used again, a subscription
    /// already streaming is kept. The file is read here, once.
    pub fn set_tls_ca_file(&self, path: &std::path::Path) -> Result<()> {
        let certs = crate::net::transport::load_ca_file(path)?;
        self.control
            .endpoints()
            .set_tls_roots(certs, path.display().to_string());
        Ok(())
    }

    /// Sets (or with None removes) the callback.
    pub fn set_callback(&self, cb: Option<Callback>) {
        self.hooks.dispatcher.set_callback(cb);
    }

    fn check_not_leading(&self, name: &str) -> Result<()> {
        if lock(&self.leads).contains_key(name) {
            return Err(Error::new(
                Status::MS_ERR_ALREADY,
                format!("this client already leads \"{name}\""),
            ));
        }
        Ok(())
    }

    fn lead(&self, name: &str) -> Result<Arc<Lead>> {
        lock(&self.leads).get(name).cloned().ok_or_else(|| {
            Error::new(
                Status::MS_ERR_NOT_LEADING,
                format!(
                    "this client does not lead \"{name}\"; call ms_start or ms_reconnect first"
                ),
            )
        })
    }

    fn begin_lead(
        &self,
        name: &str,
        token: Zeroizing<String>,
        channel: String,
        seq: u64,
    ) -> Result<()> {
        let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let runtime = self
            .runtime
            .get_or_try_init(|| Runtime::start(self.control.endpoints().len()))?;
        self.hooks.dispatcher.register(session);
        let (lead, machine, wire) = Lead::spawn(
            session,
            LeadIdentity {
                name: c_name(name),
                key: key_of(name),
                token,
                channel,
                seq,
            },
            Nodes::new(self.control.endpoints().clone()),
            self.config.clone(),
            runtime.driver(),
        )?;
        runtime.drive_lead(
            &lead,
            machine,
            wire,
            self.config.clone(),
            self.hooks.clone(),
        )?;
        let mut leads = lock(&self.leads);
        if leads.contains_key(name) {
            drop(leads);
            lead.terminate();
            self.hooks.dispatcher.unregister(session);
            return Err(Error::new(
                Status::MS_ERR_ALREADY,
                format!("this client already leads \"{name}\""),
            ));
        }
        leads.insert(name.to_string(), lead);
        Ok(())
    }

    /// Creates stream `name` with state `{}`; this client leads it.
    pub fn start(&self, name: &str, password: &str, leader_code: &str) -> Result<()> {
        protocol::check_name(name)?;
        protocol::check_password(password)?;
        protocol::check_leader_code(leader_code)?;
        self.check_not_leading(name)?;
        // The functions make the channel from this seed and the name;
        // so does the leader (it is never sent back).
        let seed = random_hex(16)?;
        let channel = protocol::channel_of(&seed, name);
        let token = Zeroizing::new(random_hex(16)?);
        let params = kdf::Params {
            salt: random_hex(16)?,
            iterations: self.config.kdf_iterations(),
        };
        let (pw_key, code_key) = self.derive_both(&params, password, leader_code);
        let body = Zeroizing::new(protocol::frame_body(&[
            pw_key.as_bytes(),
            code_key.as_bytes(),
            params.salt.as_bytes(),
            seed.as_bytes(),
            token.as_bytes(),
        ]));
        let call = Call::start(
            &key_of(name),
            self.config.heartbeat().as_millis(),
            self.config.stream_ttl_s(),
            kdf::ALGORITHM,
            params.iterations,
        );
        let started = self.control.fcall(&call, &[&body], self.config.timeout());
        match started {
            Ok(_) => {}
            // A request sent again after a garbled or lost response (see
            // Webdis::fcall) may find the stream its first try created:
            // ours if it carries our fresh random salt (then our lead
            // token too). Asked with ms_params, which checks no secret:
            // another's stream is neither taken over nor charged a wrong
            // password.
            Err(e) if e.kind == Kind::Exists => {
                if params_of(&self.control, &key_of(name), self.config.timeout()).ok()
                    != Some(params.clone())
                {
                    return Err(Error::new(
                        Status::MS_ERR_EXISTS,
                        format!("a stream named \"{name}\" exists already; pick another name or ms_reconnect to it"),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
        self.begin_lead(name, token, channel, 0)
    }

    /// Takes up leading an existing stream; its state is kept.
    pub fn reconnect(&self, name: &str, password: &str, leader_code: &str) -> Result<()> {
        protocol::check_name(name)?;
        protocol::check_password(password)?;
        protocol::check_leader_code(leader_code)?;
        self.check_not_leading(name)?;
        let token = Zeroizing::new(random_hex(16)?);
        let (channel, seq) = self.reconnect_channel(name, password, leader_code, &token)?;
        self.begin_lead(name, token, channel, seq)
    }

    /// The keys of the password and the leader code, derived side by side
    /// (each derivation is one core's work for ~0.1 s at 600,000
    /// iterations: a start waits for one, not two).
    fn derive_both(
        &self,
        params: &kdf::Params,
        password: &str,
        leader_code: &str,
    ) -> (Zeroizing<String>, Zeroizing<String>) {
        std::thread::scope(|s| {
            let pw = std::thread::Builder::new()
                .name("ms-kdf".into())
                .spawn_scoped(s, || self.keys.derive(params, Secret::Password, password));
            let code = self.keys.derive(params, Secret::LeaderCode, leader_code);
            let pw = match pw {
                Ok(handle) => handle.join().ok(),
                Err(_) => None,
            };
            // No thread (or it failed): derive here.
            let pw = pw.unwrap_or_else(|| self.keys.derive(params, Secret::Password, password));
            (pw, code)
        })
    }

    /// Checks a leader's credentials with ms_reconnect, which makes `token`
    /// the stream's lead token; returns the channel and the seq.
    fn reconnect_channel(
        &self,
        name: &str,
        password: &str,
        leader_code: &str,
        token: &str,
    ) -> Result<(String, u64)> {
        let params = params_of(&self.control, &key_of(name), self.config.timeout())?;
        let (pw_key, code_key) = self.derive_both(&params, password, leader_code);
        let body = Zeroizing::new(protocol::frame_body(&[
            pw_key.as_bytes(),
            code_key.as_bytes(),
            token.as_bytes(),
        ]));
        let call = Call::reconnect(
            &key_of(name),
            self.config.heartbeat().as_millis(),
            self.config.stream_ttl_s(),
        );
        let answered = self
            .control
            .fcall_answered(&call, &[&body], self.config.timeout());
        // The channel comes sealed with the leader code's key.
        let connected = Connected::of(answered.result?, "ms_reconnect")?;
        protocol::open_sealed(&connected.channel_sealed, &code_key, &answered.nonce)
            .map(|channel| (channel, connected.seq))
            .ok_or_else(|| protocol::protocol_error("ms_reconnect"))
    }

    /// Hands over a new state; returns at once.
    pub fn publish(&self, name: &str, state: &[u8]) -> Result<()> {
        // Checked and copied in one pass: the lead keeps the copy.
        let state = protocol::check_state_owned(state)?;
        self.lead(name)?.publish(state)
    }

    /// Waits until every state published before the call is stored.
    pub fn flush(&self, name: &str, timeout_ms: u32) -> Result<()> {
        self.lead(name)?
            .flush(Duration::from_millis(timeout_ms as u64))
    }

    /// Deletes the stream; its followers get ENDED.
    pub fn stop(&self, name: &str) -> Result<()> {
        let lead = self.lead(name)?;
        lead.pause();
        let id = lead.identity();
        let body = protocol::frame_body(&[id.token.as_bytes(), id.channel.as_bytes()]);
        let Answered {
            result,
            resent: repeated,
            ..
        } = self
            .control
            .fcall_answered(&Call::stop(&id.key), &[&body], self.config.timeout());
        let result = match result {
            // Sent again after a lost or garbled response: the stream
            // being gone is what the first try did.
            Err(e) if repeated && e.kind == Kind::NotFound => Ok(Value::Null),
            r => r,
        };
        match result {
            // Any failure but the stream being gone: the lead goes on.
            Err(e) if e.kind != Kind::NotFound => {
                lead.resume();
                Err(e)
            }
            // Stopped, or gone already: the lead ends.
            result => {
                {
                    let mut leads = lock(&self.leads);
                    if leads.get(name).is_some_and(|l| l.session == lead.session) {
                        leads.remove(name);
                    }
                }
                lead.terminate();
                self.hooks.dispatcher.unregister(lead.session);
                result.map(|_| ())
            }
        }
    }

    /// Follows stream `name`: on success its current state is the first
    /// STATE event, already queued for the callback.
    pub fn connect(&self, name: &str, password: &str) -> Result<()> {
        protocol::check_name(name)?;
        protocol::check_password(password)?;
        let already = || {
            Error::new(
                Status::MS_ERR_ALREADY,
                format!("this client already follows \"{name}\""),
            )
        };
        let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let follow = Arc::new(Follow::new(session));
        let stream = c_name(name);
        {
            let mut follows = lock(&self.follows);
            if follows.contains_key(name) {
                return Err(already());
            }
            // Registered before the first state can reach the callback, so
            // that the callback may disconnect it.
            follows.insert(name.to_string(), follow.clone());
            self.hooks.dispatcher.register(session);
        }
        self.start_follow(&follow, stream.clone(), password, || {
            (self.hooks.follow_ended)(session, &stream)
        })
    }

    /// Starts `follow` (registered with the dispatcher and kept by the
    /// caller already) on the client's runtime, started first if need be.
    /// On failure `forget` drops the caller's entry, then the follow is
    /// unregistered and cancelled: nothing of it is left.
    fn start_follow(
        &self,
        follow: &Arc<Follow>,
        stream: Arc<CString>,
        password: &str,
        forget: impl FnOnce(),
    ) -> Result<()> {
        let result = self
            .runtime
            .get_or_try_init(|| Runtime::start(self.control.endpoints().len()))
            .and_then(|rt| {
                follow.start(
                    stream,
                    password,
                    &self.keys,
                    &self.control,
                    self.config.clone(),
                    self.hooks.clone(),
                    rt.handle(),
                )
            });
        if result.is_err() {
            forget();
            self.hooks.dispatcher.unregister(follow.session);
            follow.cancel(Duration::from_millis(400));
        }
        result
    }

    /// Another follow of `name` on this client, beside the one `connect`
    /// keeps under the name (through the API a client follows a name
    /// once): follows of one stream in one client share one subscription,
    /// and tests check that with this. Its events carry the name; it ends
    /// with `disconnect_member` or the client. Returns its session.
    #[doc(hidden)]
    pub fn connect_member(&self, name: &str, password: &str) -> Result<u64> {
        protocol::check_name(name)?;
        protocol::check_password(password)?;
        let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let follow = Arc::new(Follow::new(session));
        lock(&self.members).insert(session, follow.clone());
        self.hooks.dispatcher.register(session);
        self.start_follow(&follow, c_name(name), password, || {
            lock(&self.members).remove(&session);
        })?;
        Ok(session)
    }

    /// Ends a follow of `connect_member`.
    #[doc(hidden)]
    pub fn disconnect_member(&self, session: u64) -> Result<()> {
        let follow = lock(&self.members).remove(&session).ok_or_else(|| {
            Error::new(
                Status::MS_ERR_NOT_FOLLOWING,
                format!("this client has no follow {session}"),
            )
        })?;
        self.hooks.dispatcher.unregister(follow.session);
        follow.cancel(Duration::from_millis(400));
        Ok(())
    }

    /// Ends following `name`; no event of it is delivered after this
    /// returns (unless called from the callback delivering one).
    pub fn disconnect(&self, name: &str) -> Result<()> {
        let follow = lock(&self.follows).remove(name).ok_or_else(|| {
            Error::new(
                Status::MS_ERR_NOT_FOLLOWING,
                format!("this client does not follow \"{name}\""),
            )
        })?;
        self.hooks.dispatcher.unregister(follow.session);
        follow.cancel(Duration::from_millis(400));
        Ok(())
    }

    /// The live streams. With several endpoints, the followers of each
    /// stream are summed over every node (Redis counts only the
    /// subscribers of its own node); a node that does not answer in time
    /// adds none.
    pub fn list(&self) -> Result<Vec<StreamInfo>> {
        let timeout = self.config.timeout();
        let deadline = Instant::now() + timeout;
        // Page by page (each call of the functions looks at a bounded part
        // of the index), within the timeout overall.
        let mut entries = Vec::new();
        let mut cursor = "0".to_string();
        let mut node;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::new(
                    Status::MS_ERR_TIMEOUT,
                    format!(
                        "listing the streams took more than {} ms",
                        timeout.as_millis()
                    ),
                ));
            }
            let answered = self.control.fcall_answered(&Call::list(&cursor), &[], left);
            node = answered.node;
            // Times on Redis' clock, moved onto this machine's: a caller
            // compares them with its own clock.
            let page = ListPage::of(answered.result?)?.rebased(crate::util::wall_ms());
            if page.skipped > 0 {
                crate::util::debug_log!(
                    "ms_list: the functions skipped {} index entries whose name this version refuses (not UTF-8, control or bidirectional formatting characters) or whose record is of an earlier version",
                    page.skipped
                );
            }
            cursor = page.cursor;
            entries.extend(page.entries);
            if cursor == "0" {
                break;
            }
        }
        let mut out: Vec<StreamInfo> = Vec::with_capacity(entries.len());
        let mut seen = std::collections::HashSet::new();
        for entry in entries {
            // A name the library refuses (not valid UTF-8, control or
            // bidirectional formatting characters: put in the index before
            // the functions refused them, or by hand) is not shown.
            let entry = entry.map_err(|rec| format!("{rec:?}")).and_then(|info| {
                protocol::check_name(&info.name)
                    .map(|()| info)
                    .map_err(|e| e.message)
            });
            match entry {
                // A name may come twice while the index changes (SSCAN).
                Ok(info) => {
                    if seen.insert(info.name.clone()) {
                        out.push(info)
                    }
                }
                // One entry this library cannot read (a record written by
                // hand?) does not hide the others.
                Err(why) => {
                    crate::util::debug_log!("ms_list: skipped an entry it cannot read: {why}")
                }
            }
        }
        let others: Vec<usize> = (0..self.control.endpoints().len())
            .filter(|&n| n != node)
            .collect();
        if !others.is_empty() {
            let counts: Vec<Vec<(String, u64)>> = std::thread::scope(|s| {
                let asks: Vec<_> = others
                    .iter()
                    .map(|&node| s.spawn(move || self.subscribers_on(node, timeout)))
                    .collect();
                asks.into_iter()
                    .map(|a| a.join().unwrap_or_default())
                    .collect()
            });
            for (name, n) in counts.into_iter().flatten() {
                if let Some(info) = out.iter_mut().find(|i| i.name == name) {
                    info.followers = (info.followers as u64 + n).min(u32::MAX as u64) as u32;
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The followers of each stream subscribed on node `node`
    /// (ms_subscribers); none when it does not answer.
    fn subscribers_on(&self, node: usize, timeout: Duration) -> Vec<(String, u64)> {
        let deadline = Instant::now() + timeout;
        let mut counts = Vec::new();
        let mut cursor = "0".to_string();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = if left.is_zero() {
                Err(Error::new(Status::MS_ERR_TIMEOUT, "out of time"))
            } else {
                self.control
                    .node(node)
                    .fcall(&Call::subscribers(&cursor), &[], left)
            };
            let page = match reply.and_then(SubscriberPage::of) {
                Ok(page) => page,
                Err(e) => {
                    crate::util::debug_log!("ms_subscribers at {}: {e}", self.control.base(node));
                    return Vec::new();
                }
            };
            cursor = page.cursor;
            counts.extend(page.counts);
            if cursor == "0" {
                break;
            }
        }
        counts
    }

    /// Number of events waiting for the callback (for tests and benches).
    pub fn queued_events(&self) -> usize {
        self.hooks.dispatcher.queued()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let timeout = self.config.timeout();
        let leads: Vec<_> = lock(&self.leads).drain().map(|(_, l)| l).collect();
        let mut follows: Vec<_> = lock(&self.follows).drain().map(|(_, f)| f).collect();
        follows.extend(lock(&self.members).drain().map(|(_, f)| f));
        for f in &follows {
            self.hooks.dispatcher.unregister(f.session);
        }
        // Follows end at once (the network thread drops each and answers,
        // without waiting for anything).
        for f in &follows {
            f.cancel(Duration::from_millis(400));
        }
        // Leads deliver their pending states in parallel, each within the
        // request timeout.
        std::thread::scope(|s| {
            for lead in &leads {
                s.spawn(move || lead.close(timeout));
            }
        });
        // The reactor and its workers end (every lead has).
        drop(self.runtime.take());
        self.hooks.dispatcher.shutdown();
        self.control.shutdown();
        // The shared connections closed now, not when the last follow
        // thread lets go of them.
        self.control.endpoints().shutdown();
    }
}
