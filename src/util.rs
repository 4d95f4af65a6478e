//! Small helpers every module may use: locking that survives a poisoned
//! mutex, random tokens from the operating system, and diagnostics.

use crate::error::{Error, Result, Status};
use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, ignoring poisoning: every critical section here leaves
/// the data consistent, and a panic elsewhere must not cascade.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hex of `n` random bytes from the operating system (the `getrandom`
/// crate: getrandom(2) on Linux, the platform's source elsewhere).
pub fn random_hex(n: usize) -> Result<String> {
    let mut buf = vec![0u8; n];
    getrandom::getrandom(&mut buf).map_err(|e| {
        Error::new(
            Status::MS_ERR_INTERNAL,
            format!("no randomness from the operating system: {e}"),
        )
    })?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// This machine's wall clock, in ms since the Unix epoch (0 before it).
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Diagnostics on standard error when `MISSIONSTREAM_DEBUG` is set (to
/// anything but empty or `0`): retries, lost and recovered subscriptions,
/// publish failures. Off by default; read once.
macro_rules! debug_log {
    ($($arg:tt)*) => {
        if *$crate::util::DEBUG {
            eprintln!("missionstream[{:?}]: {}", std::thread::current().name().unwrap_or("?"), format_args!($($arg)*));
        }
    };
}
pub(crate) use debug_log;

pub(crate) static DEBUG: once_cell::sync::Lazy<bool> = once_cell::sync::Lazy::new(|| {
    debug_wanted(std::env::var("MISSIONSTREAM_DEBUG").ok().as_deref())
});

/// Whether a value of `MISSIONSTREAM_DEBUG` turns the diagnostics on:
/// set, and neither empty nor `0`.
fn debug_wanted(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

/// Tests: how much busier than one runnable thread per core the machine
/// is (the 1-minute load average per core, at least 1). A unit test's
/// timing bound is multiplied by it, so that it stays tight on an idle
/// machine and holds on a busy one.
#[cfg(test)]
pub(crate) fn load_factor() -> f64 {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let load: f64 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    (load / cores).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_differ() {
        let a = random_hex(16).unwrap();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(a, random_hex(16).unwrap());
    }

    #[test]
    fn debug_switch_values() {
        // Off: unset, empty, "0".
        assert!(!debug_wanted(None));
        assert!(!debug_wanted(Some("")));
        assert!(!debug_wanted(Some("0")));
        // On: anything else, including values that merely contain a 0.
        for on in ["1", "yes", "true", "00", "10", " ", "false"] {
            assert!(debug_wanted(Some(on)), "{on:?} should turn it on");
        }
    }
}
