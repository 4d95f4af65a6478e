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
