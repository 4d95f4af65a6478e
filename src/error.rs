//! Statuses and the error type shared by the whole crate.

use std::fmt;

/// The result of every fallible call. Values are part of the ABI.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ms_status {
    /// Success.
    MS_OK = 0,
    /// NULL, bad UTF-8, empty or oversized name, password or leader code.
    MS_ERR_INVALID_ARGUMENT = 1,
    /// ms_start: the name is taken.
    MS_ERR_EXISTS = 2,
    /// No such stream.
    MS_ERR_NOT_FOUND = 3,
    /// The password is wrong.
    MS_ERR_BAD_PASSWORD = 4,
    /// The leader code is wrong.
    MS_ERR_BAD_LEADER_CODE = 5,
    /// ms_publish/ms_flush/ms_stop on a name this client does not lead (or
    /// no longer: another client took the lead over with ms_reconnect).
    MS_ERR_NOT_LEADING = 6,
    /// ms_disconnect on a name this client does not follow.
    MS_ERR_NOT_FOLLOWING = 7,
    /// ms_start/ms_reconnect/ms_connect on a name this client already leads/follows.
    MS_ERR_ALREADY = 8,
    /// The state is over the limit (8 MiB).
    MS_ERR_TOO_LARGE = 9,
    /// The operation did not finish in time.
    MS_ERR_TIMEOUT = 10,
    /// Webdis unreachable, or Webdis cannot reach Redis.
    MS_ERR_UNAVAILABLE = 11,
    /// Webdis refused the command (ACL, HTTP 403).
    MS_ERR_FORBIDDEN = 12,
    /// Redis error: e.g. the functions library is missing or of another version.
    MS_ERR_SERVER = 13,
    /// A response the library does not understand.
    MS_ERR_PROTOCOL = 14,
    /// A bug: a panic caught at the boundary.
    MS_ERR_INTERNAL = 15,
    /// Too many wrong passwords or leader codes for this stream: its secret
    /// checks are locked for a short, growing time (at most a few
    /// seconds); the message says when to retry.
    MS_ERR_THROTTLED = 16,
}

pub use ms_status as Status;

impl Status {
    /// All statuses, in value order.
    pub const ALL: [Status; 17] = [
        Status::MS_OK,
        Status::MS_ERR_INVALID_ARGUMENT,
        Status::MS_ERR_EXISTS,
        Status::MS_ERR_NOT_FOUND,
        Status::MS_ERR_BAD_PASSWORD,
        Status::MS_ERR_BAD_LEADER_CODE,
        Status::MS_ERR_NOT_LEADING,
        Status::MS_ERR_NOT_FOLLOWING,
        Status::MS_ERR_ALREADY,
        Status::MS_ERR_TOO_LARGE,
        Status::MS_ERR_TIMEOUT,
        Status::MS_ERR_UNAVAILABLE,
        Status::MS_ERR_FORBIDDEN,
        Status::MS_ERR_SERVER,
        Status::MS_ERR_PROTOCOL,
        Status::MS_ERR_INTERNAL,
        Status::MS_ERR_THROTTLED,
    ];

    /// The status with this value, if any (values come from C as integers).
    pub fn from_raw(raw: u32) -> Option<Status> {
        Status::ALL.get(raw as usize).copied()
    }

    /// The C name of the status, e.g. `"MS_ERR_NOT_FOUND"`, NUL-terminated.
    pub fn name_with_nul(self) -> &'static str {
        match self {
            Status::MS_OK => "MS_OK\0",
            Status::MS_ERR_INVALID_ARGUMENT => "MS_ERR_INVALID_ARGUMENT\0",
            Status::MS_ERR_EXISTS => "MS_ERR_EXISTS\0",
            Status::MS_ERR_NOT_FOUND => "MS_ERR_NOT_FOUND\0",
            Status::MS_ERR_BAD_PASSWORD => "MS_ERR_BAD_PASSWORD\0",
            Status::MS_ERR_BAD_LEADER_CODE => "MS_ERR_BAD_LEADER_CODE\0",
            Status::MS_ERR_NOT_LEADING => "MS_ERR_NOT_LEADING\0",
            Status::MS_ERR_NOT_FOLLOWING => "MS_ERR_NOT_FOLLOWING\0",
            Status::MS_ERR_ALREADY => "MS_ERR_ALREADY\0",
            Status::MS_ERR_TOO_LARGE => "MS_ERR_TOO_LARGE\0",
            Status::MS_ERR_TIMEOUT => "MS_ERR_TIMEOUT\0",
            Status::MS_ERR_UNAVAILABLE => "MS_ERR_UNAVAILABLE\0",
            Status::MS_ERR_FORBIDDEN => "MS_ERR_FORBIDDEN\0",
            Status::MS_ERR_SERVER => "MS_ERR_SERVER\0",
            Status::MS_ERR_PROTOCOL => "MS_ERR_PROTOCOL\0",
            Status::MS_ERR_INTERNAL => "MS_ERR_INTERNAL\0",
            Status::MS_ERR_THROTTLED => "MS_ERR_THROTTLED\0",
        }
    }

    /// The C name of the status, e.g. `"MS_ERR_NOT_FOUND"`.
    pub fn name(self) -> &'static str {
        let n = self.name_with_nul();
        &n[..n.len() - 1]
    }

    /// Whether an operation failing with this status may succeed when tried
    /// again unchanged (the network or the server may come back). The one
    /// retry policy of the library: a lead's publisher and a follower keep
    /// trying, with backoff, after a transient status, and end (the lead
    /// with PUBLISH_FAILED, the follow with ENDED) after any other, such as
    /// NOT_FOUND, BAD_PASSWORD, BAD_LEADER_CODE or FORBIDDEN.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Status::MS_ERR_TIMEOUT
                | Status::MS_ERR_UNAVAILABLE
                | Status::MS_ERR_PROTOCOL
                | Status::MS_ERR_SERVER
                | Status::MS_ERR_THROTTLED
        )
    }
}

/// A failure: its status and a sentence a user can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub status: Status,
    pub message: String,
}

impl Error {
    pub fn new(status: Status, message: impl Into<String>) -> Error {
        Error {
            status,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(Status::MS_ERR_INVALID_ARGUMENT, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status.name(), self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
