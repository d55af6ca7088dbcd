//! The crate's one error type.

/// What can go wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is malformed (URL, table name, batch size, …). Names the setting.
    #[error("invalid postgres configuration: {0}")]
    InvalidConfig(String),

    /// The server could not be reached or refused the connection.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// The cause.
        source: tokio_postgres::Error,
    },

    /// A statement failed.
    #[error("{what}: {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: tokio_postgres::Error,
    },

    /// The sink or storage was stopped.
    #[error("stopped")]
    Stopped,
}

impl Error {
    pub(crate) fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Query { what, source }
    }

    /// Whether retrying later may succeed (connection lost, server restarting, serialization
    /// failure) rather than the request being wrong.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Stopped => true,
            Self::InvalidConfig(_) => false,
            Self::Query { source, .. } => is_transient(source),
        }
    }
}

impl Error {
    /// Whether PostgreSQL refused the *data* (SQL state classes 22, data exception, and 23,
    /// integrity constraint violation): retrying the same row can never succeed, but other rows
    /// may. Anything else — a dropped table, a lost privilege, an outage — is about the server
    /// or its schema, and retrying after an operator fixes it will.
    #[must_use]
    pub fn is_refused_data(&self) -> bool {
        match self {
            Self::Query { source, .. } => {
                source.code().is_some_and(|state| matches!(&state.code()[..2], "22" | "23"))
            }
            _ => false,
        }
    }
}

/// Whether a driver error is worth retrying: no SQL state (I/O, closed connection) or a state
/// of the classes connection exception (08), transaction rollback (40), insufficient resources
/// (53), operator intervention (57, e.g. shutdown) or system error (58).
pub(crate) fn is_transient(error: &tokio_postgres::Error) -> bool {
    match error.code() {
        None => true,
        Some(state) => {
            let class = &state.code()[..2];
            matches!(class, "08" | "40" | "53" | "57" | "58")
        }
    }
}

/// The engine's view of a failure: typed by what retrying can do. Lost connections, conflicts,
/// shortages and restarts are `transient`; refused data is `refused`; damaged data
/// (`XX001`/`XX002`) is `corrupt`; anything else (a dropped table, a lost privilege, a bad
/// setting) needs an operator: `unavailable`.
impl From<Error> for inorder::Error {
    fn from(error: Error) -> Self {
        use inorder::StorageErrorKind as Kind;
        if matches!(error, Error::Stopped) {
            return Self::Stopped;
        }
        let corrupt = matches!(&error, Error::Query { source, .. }
            if source.code().is_some_and(|state| matches!(state.code(), "XX001" | "XX002")));
        let kind = if error.is_transient() {
            Kind::Transient
        } else if error.is_refused_data() {
            Kind::Refused
        } else if corrupt {
            Kind::Corrupt
        } else {
            Kind::Unavailable
        };
        // The message carries the driver's text: no source, or error chains print it twice.
        Self::Storage(inorder::StorageError::new(kind, error.to_string()))
    }
}

/// What this crate returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;
