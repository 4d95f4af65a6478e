//! Small helpers every module may use: locking that survives a poisoned
//! mutex, and random tokens from the operating system.

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
}
