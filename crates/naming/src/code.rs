//! The registry's answer codes: the `code` of every
//! `{"code","message","ttl","data"}` envelope. `message` carries the same
//! code as text unless the server says more.
//!
//! ```
//! use naming::code::Code;
//!
//! assert_eq!(Code::NotFound.as_i64(), -404);
//! assert_eq!(Code::from_i64(-304), Some(Code::NotModified));
//! assert_eq!(Code::from_i64(-999), None);
//! assert_eq!(Code::Ok.to_string(), "0");
//! assert_eq!(Code::Conflict.to_string(), "-409");
//! assert!(Code::NotFound == -404);
//! ```

use std::fmt;

/// One answer code of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i64)]
pub enum Code {
    /// `0`: done.
    Ok = 0,
    /// `-304`: a poll's hold expired (or the server is stopping) with
    /// nothing newer to report.
    NotModified = -304,
    /// `-400`: a missing or bad parameter, or a limit was hit.
    BadRequest = -400,
    /// `-401`: a token is missing or wrong.
    Unauthorized = -401,
    /// `-404`: unknown appid, zone or instance; between peers, "send me
    /// your copy".
    NotFound = -404,
    /// `-409`: between peers, "mine is newer" (the newer copy comes back as
    /// `data`).
    Conflict = -409,
    /// `-500`: reads are not served yet (the node is still syncing).
    ServerError = -500,
    /// `-503`: too many connections.
    Unavailable = -503,
}

impl Code {
    /// Every code, in ascending wire order of magnitude.
    pub const ALL: [Code; 8] = [
        Code::Ok,
        Code::NotModified,
        Code::BadRequest,
        Code::Unauthorized,
        Code::NotFound,
        Code::Conflict,
        Code::ServerError,
        Code::Unavailable,
    ];

    /// The number on the wire.
    pub const fn as_i64(self) -> i64 {
        self as i64
    }

    /// The code of a wire number; `None` for a number this stack never
    /// sends.
    pub const fn from_i64(code: i64) -> Option<Code> {
        Some(match code {
            0 => Code::Ok,
            -304 => Code::NotModified,
            -400 => Code::BadRequest,
            -401 => Code::Unauthorized,
            -404 => Code::NotFound,
            -409 => Code::Conflict,
            -500 => Code::ServerError,
            -503 => Code::Unavailable,
            _ => return None,
        })
    }

    /// The code as the wire's `message` text (`"-404"`), without
    /// allocating.
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "0",
            Code::NotModified => "-304",
            Code::BadRequest => "-400",
            Code::Unauthorized => "-401",
            Code::NotFound => "-404",
            Code::Conflict => "-409",
            Code::ServerError => "-500",
            Code::Unavailable => "-503",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Code> for i64 {
    fn from(c: Code) -> i64 {
        c.as_i64()
    }
}

impl PartialEq<i64> for Code {
    fn eq(&self, other: &i64) -> bool {
        self.as_i64() == *other
    }
}

impl PartialEq<Code> for i64 {
    fn eq(&self, other: &Code) -> bool {
        *self == other.as_i64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_text_is_the_number() {
        for c in Code::ALL {
            assert_eq!(Code::from_i64(c.as_i64()), Some(c));
            assert_eq!(c.to_string(), c.as_i64().to_string());
            assert_eq!(c, c.as_i64());
        }
        assert_eq!(Code::from_i64(1), None);
    }
}
