//! The user-facing error: a one-line message naming the thing at fault, and the errno
//! when one caused it. (The filesystem core uses bare `Errno`s on its hot paths.)

use std::fmt;

#[derive(Debug)]
pub struct Error {
    msg: String,
    errno: Option<i32>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(msg: impl Into<String>) -> Self {
        Error {
            msg: msg.into(),
            errno: None,
        }
    }

    pub fn with_errno(msg: impl Into<String>, errno: i32) -> Self {
        Error {
            msg: msg.into(),
            errno: Some(errno),
        }
    }

    /// Wrap an I/O error with what we were doing: "reading /x: No such file".
    pub fn io(what: impl fmt::Display, e: std::io::Error) -> Self {
        Error {
            msg: format!("{what}: {}", describe(&e)),
            errno: e.raw_os_error(),
        }
    }

    pub fn errno(&self) -> Option<i32> {
        self.errno
    }

    pub fn message(&self) -> &str {
        &self.msg
    }

    /// Prefix the message with more context.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Error {
            msg: format!("{what}: {}", self.msg),
            errno: self.errno,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        Error::with_errno(
            describe(&std::io::Error::from_raw_os_error(e.raw_os_error())),
            e.raw_os_error(),
        )
    }
}

/// An I/O error as one short phrase: "No such file or directory", without "(os error 2)".
pub fn describe(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Attach context to any `Result` whose error is an `io::Error`.
pub trait IoContext<T> {
    fn ctx(self, what: impl fmt::Display) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, std::io::Error> {
    fn ctx(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::io(what, e))
    }
}

impl<T> IoContext<T> for std::result::Result<T, rustix::io::Errno> {
    fn ctx(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::from(e).context(what))
    }
}

impl<T> IoContext<T> for Result<T> {
    fn ctx(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.context(what))
    }
}
