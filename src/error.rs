//! The user-facing error: a one-line message naming the thing at fault, the kind of
//! failure (what programs look at: nothing matches on message text), the errno when one
//! caused it, and the underlying cause as `source()`. (The filesystem core uses bare
//! `Errno`s on its hot paths.)
//!
//! The message is the whole line users see, context included; `source()` gives the
//! cause for programs and logs, its text is already part of the message.

use std::fmt;

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// What was named does not exist: an image, container, tag, layer, blob, path.
    NotFound,
    /// A name or path is taken already.
    AlreadyExists,
    /// Busy or still referenced: an image a container uses (or tagged in several
    /// repositories), a mounted container, a busy mountpoint.
    InUse,
    /// A name or id prefix matches more than one thing.
    Ambiguous,
    /// An argument, option, name or reference is malformed.
    InvalidInput,
    /// A format, media type or algorithm we do not handle.
    Unsupported,
    /// Content fails its checks: a digest or size mismatch, a document or stream that
    /// does not parse, an archive member missing, an entry that would leave its layer.
    Corrupt,
    /// The system refused access (`EACCES`, `EPERM`).
    PermissionDenied,
    /// A registry refused the credentials, or wants some.
    Unauthorized,
    /// Talking to a registry failed: connection, TLS, timeout, an unexpected answer.
    Network,
    /// Stopped because another part of the same operation failed: that part's error is
    /// the one to report.
    Cancelled,
    /// Any other failure of a system call or of the disk.
    Io,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The kind an errno stands for.
    pub fn of_errno(errno: i32) -> ErrorKind {
        match errno {
            libc::ENOENT => ErrorKind::NotFound,
            libc::EEXIST => ErrorKind::AlreadyExists,
            libc::EBUSY => ErrorKind::InUse,
            libc::EACCES | libc::EPERM => ErrorKind::PermissionDenied,
            _ => ErrorKind::Io,
        }
    }

    /// The kind of an I/O error: ours when it carries one of our errors, else from its
    /// errno or its own kind.
    pub fn of_io(e: &std::io::Error) -> ErrorKind {
        if let Some(ours) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
            return ours.kind;
        }
        if let Some(n) = e.raw_os_error() {
            return ErrorKind::of_errno(n);
        }
        match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            std::io::ErrorKind::ResourceBusy => ErrorKind::InUse,
            std::io::ErrorKind::InvalidData => ErrorKind::Corrupt,
            _ => ErrorKind::Io,
        }
    }
}

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    msg: String,
    errno: Option<i32>,
    source: Option<Cause>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error of kind `Other`.
    pub fn new(msg: impl Into<String>) -> Self {
        Error::with_kind(ErrorKind::Other, msg)
    }

    /// An error of the given kind.
    pub fn with_kind(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Error {
            kind,
            msg: msg.into(),
            errno: None,
            source: None,
        }
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::with_kind(ErrorKind::NotFound, msg)
    }

    pub fn already_exists(msg: impl Into<String>) -> Self {
        Error::with_kind(ErrorKind::AlreadyExists, msg)
    }

    pub fn in_use(msg: impl Into<String>) -> Self {
        Error::with_kind(ErrorKind::InUse, msg)
    }

    pub fn ambiguous(msg: impl Into<String>) -> Self {
        Error::with_kind(ErrorKind::Ambiguous, msg)
    }

    pub fn invalid_input(msg: impl Into<String>) -> Self {
        Error::with_kind(ErrorKind::InvalidInput, msg)
    }

    pub fn unsupported(msg: impl Into<String>) -> Self {
        Error::with_kind(ErrorKind::Unsupported, msg)
    }

    pub fn corrupt(msg: impl Into<String>) -> Self {
        Error::with_kind(ErrorKind::Corrupt, msg)
    }

    pub fn network(msg: impl Into<String>) -> Self {
        Error::with_kind(ErrorKind::Network, msg)
    }

    pub fn unauthorized(msg: impl Into<String>) -> Self {
        Error::with_kind(ErrorKind::Unauthorized, msg)
    }

    pub fn cancelled(msg: impl Into<String>) -> Self {
        Error::with_kind(ErrorKind::Cancelled, msg)
    }

    /// An error an errno caused; the kind follows from it.
    pub fn with_errno(msg: impl Into<String>, errno: i32) -> Self {
        Error {
            kind: ErrorKind::of_errno(errno),
            msg: msg.into(),
            errno: Some(errno),
            source: None,
        }
    }

    /// Wrap an I/O error with what we were doing: "reading /x: No such file".
    pub fn io(what: impl fmt::Display, e: std::io::Error) -> Self {
        Error {
            kind: ErrorKind::of_io(&e),
            msg: format!("{what}: {}", describe(&e)),
            errno: e.raw_os_error(),
            source: Some(Box::new(e)),
        }
    }

    /// The same error with `cause` as its source (its text should be in the message).
    pub fn with_source(mut self, cause: impl Into<Cause>) -> Self {
        self.source = Some(cause.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn errno(&self) -> Option<i32> {
        self.errno
    }

    pub fn message(&self) -> &str {
        &self.msg
    }

    /// Prefix the message with more context (kind, errno and source stay).
    pub fn context(self, what: impl fmt::Display) -> Self {
        Error {
            msg: format!("{what}: {}", self.msg),
            ..self
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        let io = std::io::Error::from_raw_os_error(e.raw_os_error());
        Error::with_errno(describe(&io), e.raw_os_error()).with_source(io)
    }
}

/// An I/O error as an error of ours, its message the one short phrase (`describe`).
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error {
            kind: ErrorKind::of_io(&e),
            msg: describe(&e),
            errno: e.raw_os_error(),
            source: Some(Box::new(e)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn kinds_follow_the_cause() {
        let e = Error::io(
            "reading /x",
            std::io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert_eq!(e.to_string(), "reading /x: No such file or directory");
        assert!(e.source().is_some());
        let e = e.context("image a");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "image a: reading /x: No such file or directory"
        );
        assert_eq!(
            Error::from(rustix::io::Errno::BUSY).kind(),
            ErrorKind::InUse
        );
        assert_eq!(Error::new("x").kind(), ErrorKind::Other);
    }

    #[test]
    fn our_error_through_io_keeps_its_kind() {
        let inner = Error::cancelled("the reader stopped");
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, inner);
        let e = Error::io("/a/file", io);
        assert_eq!(e.kind(), ErrorKind::Cancelled);
        assert_eq!(e.to_string(), "/a/file: the reader stopped");
        let e = Error::from(std::io::Error::other(Error::corrupt("bad")));
        assert_eq!(
            (e.kind(), e.to_string().as_str()),
            (ErrorKind::Corrupt, "bad")
        );
    }
}
