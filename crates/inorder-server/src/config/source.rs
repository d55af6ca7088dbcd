//! Where in `inorder.toml` a problem is: every error the configuration gets names the file, the
//! line and the key — `inorder.toml:12: subscriptions.purchases.ordering: unknown variant …`.
//!
//! Values are checked while they are deserialized ([`super::values`]), so the toml error's span
//! points at the bad value or key; the span becomes a line number and the key's path, in which
//! `[[topics]]` and `[[subscriptions]]` entries are named by their `name` (the path an `INORDER_*`
//! variable uses). The few checks that relate two keys run after deserialization and name the
//! path they are about ([`Source::key_error`]).
//!
//! With `INORDER_*` overrides the configuration is the file with the overrides applied, rendered
//! again as TOML: its errors name the key, but no line (the text is not the file's).

use std::{
    fmt::Display,
    ops::Range,
    path::{Path, PathBuf},
};

use anyhow::Context;
use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

/// The TOML text the configuration is read from, and what to call it in errors.
pub(super) struct Source {
    text: String,
    origin: Origin,
}

enum Origin {
    /// The file as written: lines are the file's.
    File(PathBuf),
    /// The file with `INORDER_*` overrides applied.
    Overridden(PathBuf),
    /// No file: the embedded default and `INORDER_*` variables.
    Environment,
    /// A management API request's body (JSON with the file's keys).
    Request,
}

impl Source {
    /// The text of the file at `path`.
    pub(super) fn file(path: &Path, text: String) -> Self {
        Self { text, origin: Origin::File(path.to_owned()) }
    }

    /// A management API request's body: errors name the key, not a file.
    pub(super) fn request() -> Self {
        Self { text: String::new(), origin: Origin::Request }
    }

    /// A configuration built from `INORDER_*` overrides applied to the file at `path` (`None`:
    /// to nothing), rendered as TOML.
    ///
    /// # Errors
    /// The overrides make a value TOML cannot write.
    pub(super) fn overridden(path: Option<&Path>, value: &toml::Value) -> anyhow::Result<Self> {
        let origin = path.map_or(Origin::Environment, |path| Origin::Overridden(path.to_owned()));
        let text =
            toml::to_string(value).context("INORDER_* overrides do not form a TOML table")?;
        Ok(Self { text, origin })
    }

    /// What the configuration is called in messages: the file's path, or the environment.
    pub(super) fn origin_name(&self) -> String {
        match &self.origin {
            Origin::File(path) | Origin::Overridden(path) => path.display().to_string(),
            Origin::Environment => "INORDER_* environment".to_owned(),
            Origin::Request => "request body".to_owned(),
        }
    }

    /// The text deserialized as `T`; an error names the line and key.
    ///
    /// # Errors
    /// The problem the deserialization found, located.
    pub(super) fn deserialize<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        toml::from_str(&self.text).map_err(|error| {
            let span = error.span();
            let key = span.as_ref().and_then(|span| key_path(&self.text, span.start));
            self.error(span, key.as_deref(), error.message())
        })
    }

    /// An error about the key at `path` (`["subscriptions", "archive", "delivery"]`), found after
    /// deserialization; it names the key's line, or the line of its nearest present parent.
    pub(super) fn key_error(&self, path: &[&str], message: impl Display) -> anyhow::Error {
        self.error(key_span(&self.text, path), Some(&path.join(".")), message)
    }

    /// An error about the configuration as a whole (names no key).
    pub(super) fn whole_error(&self, message: impl Display) -> anyhow::Error {
        self.error(None, None, message)
    }

    fn error(
        &self,
        span: Option<Range<usize>>,
        key: Option<&str>,
        message: impl Display,
    ) -> anyhow::Error {
        let at = match &self.origin {
            Origin::File(path) => match span {
                Some(span) => format!("{}:{}", path.display(), line_of(&self.text, span.start)),
                None => path.display().to_string(),
            },
            Origin::Overridden(path) => format!("{} with INORDER_* overrides", path.display()),
            Origin::Environment => "INORDER_* environment".to_owned(),
            Origin::Request => "request body".to_owned(),
        };
        match key {
            Some(key) => anyhow::anyhow!("{at}: {key}: {message}"),
            None => anyhow::anyhow!("{at}: {message}"),
        }
    }
}

/// The 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes().iter().take(offset).filter(|&&byte| byte == b'\n').count() + 1
}

/// The path of the key at byte `offset`: the key or value that holds it; failing that, the
/// innermost table or array that does (a missing field is reported on its table).
fn key_path(text: &str, offset: usize) -> Option<String> {
    let root = DeTable::parse(text).ok()?;
    let root = DeValue::Table(root.into_inner());
    let mut path = Vec::new();
    let found = find(&root, offset, false, &mut path) || find(&root, offset, true, &mut path);
    (found && !path.is_empty()).then(|| path.join("."))
}

/// Depth first: pushes onto `path` the keys down to the key or leaf value spanning `offset`
/// (or, with `containers`, the innermost table or array spanning it).
fn find(value: &DeValue<'_>, offset: usize, containers: bool, path: &mut Vec<String>) -> bool {
    match value {
        DeValue::Table(table) => table.iter().any(|(key, child)| {
            let name = key.get_ref().to_string();
            if key.span().contains(&offset) {
                path.push(name);
                return true;
            }
            visit(name, child, offset, containers, path)
        }),
        DeValue::Array(items) => items.iter().enumerate().any(|(index, item)| {
            let name = entry_name(item.get_ref()).unwrap_or_else(|| index.to_string());
            visit(name, item, offset, containers, path)
        }),
        _ => false,
    }
}

/// [`find`] in `child`, named `name` in the path.
fn visit(
    name: String,
    child: &toml::Spanned<DeValue<'_>>,
    offset: usize,
    containers: bool,
    path: &mut Vec<String>,
) -> bool {
    path.push(name);
    let container = matches!(child.get_ref(), DeValue::Table(_) | DeValue::Array(_));
    let found = find(child.get_ref(), offset, containers, path)
        || (containers || !container) && child.span().contains(&offset);
    if !found {
        path.pop();
    }
    found
}

/// The span of the key at `path`, or of its nearest present parent.
fn key_span(text: &str, path: &[&str]) -> Option<Range<usize>> {
    let root = DeTable::parse(text).ok()?;
    let mut value = DeValue::Table(root.into_inner());
    let mut span = None;
    for segment in path {
        let next = match &value {
            DeValue::Table(table) => table
                .iter()
                .find(|(key, _)| key.get_ref() == segment)
                .map(|(key, value)| (key.span(), value.get_ref().clone())),
            DeValue::Array(items) => items
                .iter()
                .find(|item| entry_name(item.get_ref()).as_deref() == Some(segment))
                .map(|item| (item.span(), item.get_ref().clone())),
            _ => None,
        };
        let Some((found, inner)) = next else { break };
        span = Some(found);
        value = inner;
    }
    span
}

/// The `name` of a `[[topics]]` or `[[subscriptions]]` entry.
fn entry_name(value: &DeValue<'_>) -> Option<String> {
    let DeValue::Table(table) = value else { return None };
    table.iter().find(|(key, _)| key.get_ref() == "name").and_then(|(_, name)| {
        match name.get_ref() {
            DeValue::String(name) => Some(name.to_string()),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "listen = \"x\"\n\n[[subscriptions]]\nname = \"s\"\nordering = \"fifo\"\n\n[subscriptions.postgres]\ntable = \"t\"\n";

    #[test]
    fn a_position_becomes_the_path_of_its_key_with_entries_by_name() {
        let at = |needle: &str| TEXT.find(needle).unwrap();
        assert_eq!(key_path(TEXT, at("\"x\"")).as_deref(), Some("listen"));
        assert_eq!(key_path(TEXT, at("ordering")).as_deref(), Some("subscriptions.s.ordering"));
        assert_eq!(key_path(TEXT, at("\"fifo\"")).as_deref(), Some("subscriptions.s.ordering"));
        assert_eq!(key_path(TEXT, at("\"t\"")).as_deref(), Some("subscriptions.s.postgres.table"));
    }

    #[test]
    fn a_key_path_finds_its_line_or_its_parents() {
        let line = |path: &[&str]| key_span(TEXT, path).map(|span| line_of(TEXT, span.start));
        assert_eq!(line(&["subscriptions", "s", "ordering"]), Some(5));
        assert_eq!(line(&["subscriptions", "s", "postgres", "table"]), Some(8));
        assert_eq!(line(&["subscriptions", "s", "delivery"]), line(&["subscriptions", "s"]));
        assert_eq!(line(&["nothing"]), None);
    }
}
