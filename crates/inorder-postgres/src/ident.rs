//! SQL identifiers from configuration, validated before they reach a statement.

use std::fmt;

use crate::{
    error::{Error, Result},
    limits::IDENTIFIER_BYTES_MAX,
};

/// A table name, optionally schema-qualified: `events` or `archive.events`. Each part is
/// `[a-z_][a-z0-9_]*`, at most 63 bytes. Lower case only, so the quoted name in our statements
/// is the name users type unquoted in theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    schema: Option<String>,
    table: String,
}

impl TableName {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming what is wrong.
    pub fn parse(name: &str) -> Result<Self> {
        let (schema, table) = match name.split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, name),
        };
        for part in schema.iter().chain([&table]) {
            check_part(name, part)?;
        }
        Ok(Self { schema: schema.map(str::to_owned), table: table.to_owned() })
    }

    /// The table without its schema (for naming indexes).
    #[must_use]
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The schema, if qualified.
    #[must_use]
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }
}

fn check_part(name: &str, part: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::InvalidConfig(format!("table {name:?}: {why}")));
    let mut chars = part.chars();
    match chars.next() {
        None => return bad("empty name part"),
        Some(c) if !(c.is_ascii_lowercase() || c == '_') => {
            return bad("must start with a lower-case letter or _");
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return bad("only a-z, 0-9 and _ are allowed (and one . before the table)");
    }
    if part.len() > IDENTIFIER_BYTES_MAX {
        return bad("at most 63 bytes per part");
    }
    Ok(())
}

impl fmt::Display for TableName {
    /// The quoted form for statements: `"schema"."table"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write!(f, "\"{schema}\".")?;
        }
        write!(f, "\"{}\"", self.table)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::TableName;

    #[test]
    fn plain_and_qualified_names_are_quoted() {
        assert_eq!(TableName::parse("archived_events").unwrap().to_string(), "\"archived_events\"");
        assert_eq!(TableName::parse("a.b_2").unwrap().to_string(), "\"a\".\"b_2\"");
    }

    #[test]
    fn injection_case_and_length_are_refused() {
        for bad in ["", "x;drop table y", "Events", "1abc", "a.b.c", "a.", ".b", "a b", "é"] {
            assert!(TableName::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(TableName::parse(&"a".repeat(64)).is_err());
        assert!(TableName::parse(&"a".repeat(63)).is_ok());
    }
}
