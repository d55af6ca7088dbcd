//! Opening connections: one `tokio-postgres` client whose connection runs on its own task.

use tokio_postgres::{Client, NoTls};

use crate::error::{Error, Result};

/// Connects to `url`. The connection task ends when the client is dropped or the server goes
/// away (the client's next call then fails with a closed-connection error).
pub(crate) async fn connect(url: &str) -> Result<Client> {
    let config: tokio_postgres::Config =
        url.parse().map_err(|e| Error::InvalidConfig(format!("url {}: {e}", redact_url(url))))?;
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|source| Error::Connect { url: redact_url(url), source })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// `url` with the password replaced by `***`, for logs and errors.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, tail) = rest.split_once('/').map_or((rest, None), |(a, t)| (a, Some(t)));
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    match tail {
        Some(tail) => format!("{scheme}://{authority}/{tail}"),
        None => format!("{scheme}://{authority}"),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_a_log_line() {
        assert_eq!(redact_url("postgres://u:secret@h:5/db"), "postgres://u:***@h:5/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://u:p@h"), "postgres://u:***@h");
        assert_eq!(redact_url("host=h user=u"), "host=h user=u");
    }
}
