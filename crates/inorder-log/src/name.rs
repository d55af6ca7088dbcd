//! Names that may become file names: topics, and whatever else the caller names (the engine's
//! subscriptions).
//!
//! A [`Name`] can only be built by validation, so a value of the type is proof that joining it
//! to a directory stays inside that directory: bytes from `[A-Za-z0-9._-]`, 1 to
//! [`NAME_BYTES_MAX`] long, never `.` and never containing `..`.

use std::{fmt, str::FromStr, sync::Arc};

use crate::{
    error::Error,
    limits::{NAME_BYTES_MAX, NAME_DISPLAY_BYTES_MAX},
};

const _: () = assert!(NAME_BYTES_MAX == 200, "the refusal below names the limit");

/// A validated name (a topic's, a subscription's, …), safe to use as a file name. Cloning is cheap (shared).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

impl Name {
    /// Validates `name` as a name of `kind` (used in the error message: `topic`, `subscription`, …).
    ///
    /// # Errors
    /// [`Error::InvalidName`] if the name is empty, longer than [`NAME_BYTES_MAX`], holds a byte
    /// outside `[A-Za-z0-9._-]`, is `.`, or contains `..`.
    pub fn new(kind: &'static str, name: &str) -> Result<Self, Error> {
        let refuse = |reason| Error::InvalidName { kind, name: display_prefix(name), reason };
        if name.is_empty() {
            return Err(refuse("must not be empty"));
        }
        if name.len() > NAME_BYTES_MAX {
            return Err(refuse("longer than 200 bytes"));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(refuse("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"));
        }
        if name == "." || name.contains("..") {
            return Err(refuse("must not be '.' or contain '..'"));
        }
        Ok(Self(name.into()))
    }

    /// The name as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = Error;

    /// Parses a name without a kind; errors call it a `name`.
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new("name", s)
    }
}

/// At most [`NAME_DISPLAY_BYTES_MAX`] bytes of an offending name, cut at a character boundary,
/// for error messages.
fn display_prefix(name: &str) -> String {
    let mut end = name.len().min(NAME_DISPLAY_BYTES_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, ok: bool) {
        assert_eq!(Name::new("topic", name).is_ok(), ok, "name {name:?}");
    }

    #[test]
    fn accepts_safe_names() {
        for name in ["a", "user_purchase", "user.created", "A-Z.0-9_", ".hidden", "a.b.c"] {
            check(name, true);
        }
        check(&"x".repeat(NAME_BYTES_MAX), true);
    }

    #[test]
    fn refuses_traversal_and_odd_bytes() {
        for name in [
            "", ".", "..", "../etc", "a/../b", "a/b", "/abs", "a\\b", "a b", "a\0b", "ü", "a..b",
            "topic\n",
        ] {
            check(name, false);
        }
        check(&"x".repeat(NAME_BYTES_MAX + 1), false);
    }

    #[test]
    fn error_names_the_kind_and_truncates_long_names() {
        let long = "é".repeat(100);
        let err = Name::new("subscription", &long).unwrap_err();
        let Error::InvalidName { kind, name, .. } = err else { panic!("wrong error {err:?}") };
        assert_eq!(kind, "subscription");
        assert!(name.len() <= NAME_DISPLAY_BYTES_MAX);
    }
}
