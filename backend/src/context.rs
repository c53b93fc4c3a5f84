//! The one way the `pageless` command says what it was doing when an I/O call failed.

/// An I/O error, with what was being done when it happened.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct IoError {
    /// What was being done, e.g. `listen on /run/pageless/web1.sock`.
    pub what: String,
    /// The error of the call.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// `source`, which happened while doing `what`.
    pub fn new(what: impl Into<String>, source: impl Into<std::io::Error>) -> IoError {
        IoError { what: what.into(), source: source.into() }
    }
}

/// Attaches what was being done to a failed I/O or system call (`std::io::Error`, or `nix`'s
/// `Errno`).
pub trait Context<T> {
    /// The error, if any, as an [`IoError`] saying `what` was being done.
    fn context(self, what: impl Into<String>) -> Result<T, IoError>;
    /// Like [`Context::context`], with the description made only on failure.
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, IoError>;
}

impl<T, E: Into<std::io::Error>> Context<T> for Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T, IoError> {
        self.map_err(|e| IoError::new(what, e))
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, IoError> {
        self.map_err(|e| IoError::new(what(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_was_being_done() {
        let io: std::io::Result<()> = Err(std::io::ErrorKind::NotFound.into());
        assert_eq!(io.context("open /x").unwrap_err().to_string(), "open /x: entity not found");
        let errno: nix::Result<()> = Err(nix::errno::Errno::EPERM);
        let e = errno.with_context(|| format!("chown {}", "/y")).unwrap_err();
        assert!(e.to_string().starts_with("chown /y: "), "{e}");
        assert_eq!(e.source.raw_os_error(), Some(libc::EPERM));
    }
}
