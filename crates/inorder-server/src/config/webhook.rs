//! `[subscriptions.webhook]`: where `delivery = "webhook"` sends its events.
//!
//! The url and the headers are checked by [`crate::webhook`] (which owns what a request may
//! carry); here their errors get the file's line and the key's path —
//! `inorder.toml:9: subscriptions.s.webhook.headers.content-type: …`.

use std::{collections::BTreeMap, fmt, time::Duration};

use reqwest::header::HeaderMap;
use serde::Deserialize;

use super::{source::Source, values};
use crate::{
    limits::{WEBHOOK_HEADERS_MAX, WEBHOOK_TIMEOUT_DEFAULT},
    webhook::{WebhookConfig, parse_header, parse_url},
};

/// `[subscriptions.webhook]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    /// `http://…` or `https://…`.
    pub url: String,
    /// Sent with every request (`authorization = "Bearer …"`), at most
    /// [`WEBHOOK_HEADERS_MAX`].
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Most time one request may take (default `10s`).
    #[serde(default, deserialize_with = "values::webhook_timeout")]
    pub timeout: Option<Duration>,
}

/// Header values are often secrets: never printed.
impl fmt::Debug for WebhookFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookFile")
            .field("url", &self.url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Subscription `subscription`'s `[subscriptions.webhook]`, checked into a webhook
/// configuration.
pub(super) fn webhook_config(
    file: &WebhookFile,
    subscription: &str,
    source: &Source,
) -> anyhow::Result<WebhookConfig> {
    let at = |key: &'static str| ["subscriptions", subscription, "webhook", key];
    let url = parse_url(&file.url).map_err(|e| source.key_error(&at("url"), e))?;
    if file.headers.len() > WEBHOOK_HEADERS_MAX {
        return Err(source.key_error(
            &at("headers"),
            format!("at most {WEBHOOK_HEADERS_MAX} headers, got {}", file.headers.len()),
        ));
    }
    let mut headers = HeaderMap::with_capacity(file.headers.len());
    for (name, value) in &file.headers {
        let key = ["subscriptions", subscription, "webhook", "headers", name.as_str()];
        let (header, value) = parse_header(name, value).map_err(|e| source.key_error(&key, e))?;
        if headers.insert(header, value).is_some() {
            return Err(source.key_error(&key, "given twice (header names ignore case)"));
        }
    }
    Ok(WebhookConfig { url, headers, timeout: file.timeout.unwrap_or(WEBHOOK_TIMEOUT_DEFAULT) })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{
        Delivery,
        tests::{load, refused},
    };

    /// A webhook subscription `s` on topic `t`; its `[subscriptions.webhook]` table starts on
    /// line 7 and its url is on line 8, so what is appended starts on line 9.
    const WEBHOOK: &str = "[[topics]]\nname = \"t\"\n[[subscriptions]]\nname = \"s\"\n\
                           topics = [\"t\"]\ndelivery = \"webhook\"\n[subscriptions.webhook]\n\
                           url = \"http://127.0.0.1:9/hook\"\n";

    #[test]
    fn a_webhook_loads_with_its_headers_timeout_and_retries() {
        let config = load(&format!(
            "{WEBHOOK}timeout = \"2s\"\n[subscriptions.webhook.headers]\n\
             Authorization = \"Bearer s3cret\"\nx-tenant = \"acme\"\n"
        ))
        .unwrap();
        let Delivery::Webhook(webhook) = &config.subscriptions["s"].delivery else {
            panic!("a webhook")
        };
        assert_eq!(config.subscriptions["s"].delivery.kind(), "webhook");
        assert_eq!(webhook.url.as_str(), "http://127.0.0.1:9/hook");
        assert_eq!(webhook.timeout, Duration::from_secs(2));
        assert_eq!(webhook.headers["authorization"], "Bearer s3cret");
        assert_eq!(webhook.headers["x-tenant"], "acme");
        assert!(!format!("{config:?}").contains("s3cret"), "header values are never printed");
        let retry = config.engine.subscriptions[0].retry;
        assert_eq!((retry.initial, retry.max_attempts), (Duration::from_millis(100), 5));

        let config = load(&WEBHOOK.replace(
            "delivery = \"webhook\"\n",
            "delivery = \"webhook\"\nmax_attempts = 3\nretry_initial = \"10ms\"\n\
             retry_max_delay = \"1s\"\n",
        ))
        .unwrap();
        let Delivery::Webhook(webhook) = &config.subscriptions["s"].delivery else {
            panic!("a webhook")
        };
        assert_eq!(webhook.timeout, Duration::from_secs(10), "the default timeout");
        let retry = config.engine.subscriptions[0].retry;
        assert_eq!(
            (retry.initial, retry.max_delay, retry.max_attempts),
            (Duration::from_millis(10), Duration::from_secs(1), 3)
        );
    }

    #[test]
    fn a_webhook_needs_its_table_and_its_table_its_delivery() {
        let pull = "[[topics]]\nname = \"t\"\n[[subscriptions]]\nname = \"s\"\ntopics = [\"t\"]\n";
        refused(
            &format!("{pull}delivery = \"webhook\"\n"),
            ":6: subscriptions.s.delivery: delivery = \"webhook\" needs a [subscriptions.webhook] table",
        );
        refused(
            &format!("{pull}[subscriptions.webhook]\nurl = \"http://h/\"\n"),
            ":6: subscriptions.s.webhook: only for delivery = \"webhook\"",
        );
        refused(
            &format!("{pull}retry_initial = \"1s\"\n"),
            ":6: subscriptions.s.retry_initial: only for delivery = \"webhook\"",
        );
        refused(
            &WEBHOOK.replace("url = \"http://127.0.0.1:9/hook\"\n", "timeout = \"1s\"\n"),
            ":7: subscriptions.s.webhook: missing field `url`",
        );
    }

    #[test]
    fn every_webhook_key_is_checked_with_its_line() {
        let with_url = |url: &str| WEBHOOK.replace("http://127.0.0.1:9/hook", url);
        refused(
            &with_url("ftp://127.0.0.1/hook"),
            ":8: subscriptions.s.webhook.url: must be an http or https URL, got scheme \"ftp\"",
        );
        refused(
            &with_url("localhost:9/hook"),
            ":8: subscriptions.s.webhook.url: must be an http or https URL, got scheme \"localhost\"",
        );
        refused(
            &with_url("https://me:pw@example.com/"),
            ":8: subscriptions.s.webhook.url: must not hold credentials: send them in headers (authorization)",
        );
        refused(
            &format!("{WEBHOOK}timeout = \"6m\"\n"),
            ":9: subscriptions.s.webhook.timeout: must be at most 5m",
        );
        refused(
            &format!("{WEBHOOK}timeout = \"0s\"\n"),
            ":9: subscriptions.s.webhook.timeout: must be at least 1ms",
        );
        let headers = format!("{WEBHOOK}[subscriptions.webhook.headers]\nx-ok = \"1\"\n");
        refused(
            &format!("{headers}content-type = \"text/plain\"\n"),
            ":11: subscriptions.s.webhook.headers.content-type: content-type cannot be configured: it carries the event's datacontenttype",
        );
        refused(
            &format!("{headers}ce-id = \"x\"\n"),
            ":11: subscriptions.s.webhook.headers.ce-id: ce-id cannot be configured: ce-* headers carry the event",
        );
        refused(
            &format!("{headers}Transfer-Encoding = \"chunked\"\n"),
            ":11: subscriptions.s.webhook.headers.Transfer-Encoding: transfer-encoding cannot be configured: a hop-by-hop header",
        );
        refused(
            &format!("{headers}X-OK = \"2\"\n"),
            ":10: subscriptions.s.webhook.headers.x-ok: given twice (header names ignore case)",
        );
        refused(
            &format!("{headers}x-number = 5\n"),
            ":11: subscriptions.s.webhook.headers.x-number: invalid type: integer `5`, expected a string",
        );
        let many: String = (0..=32).map(|i| format!("x-{i} = \"v\"\n")).collect();
        refused(
            &format!("{WEBHOOK}[subscriptions.webhook.headers]\n{many}"),
            ":9: subscriptions.s.webhook.headers: at most 32 headers, got 33",
        );
    }

    #[test]
    fn retry_delays_are_checked_against_their_maximum_and_each_other() {
        let with = |keys: &str| {
            WEBHOOK.replace("delivery = \"webhook\"\n", &format!("delivery = \"webhook\"\n{keys}"))
        };
        refused(
            &with("retry_max_delay = \"2days\"\n"),
            ":7: subscriptions.s.retry_max_delay: must be at most 1day",
        );
        refused(
            &with("retry_initial = \"1m\"\n"),
            ":7: subscriptions.s.retry_initial: must not exceed retry_max_delay (30s)",
        );
        assert!(load(&with("retry_initial = \"1m\"\nretry_max_delay = \"1m\"\n")).is_ok());
    }

    #[test]
    fn the_readme_webhook_example_loads() {
        let readme = include_str!("../../../../README.md");
        let section = readme.split("### Push delivery to webhooks").nth(1).expect("the section");
        let block = section.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next());
        let text = format!("[[topics]]\nname = \"orders\"\n{}", block.expect("a toml block"));
        let config = load(&text).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
        let Delivery::Webhook(webhook) = &config.subscriptions["notify"].delivery else {
            panic!("a webhook")
        };
        assert_eq!(webhook.url.scheme(), "https");
        assert_eq!(config.engine.subscriptions[0].retry.max_attempts, 8);
    }
}
