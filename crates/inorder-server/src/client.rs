//! The CLI's HTTP client for a running server.

use anyhow::bail;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

/// Talks to one server.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client for the server at `base` (`http://127.0.0.1:7070`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self { http: reqwest::Client::new(), base: base.trim_end_matches('/').to_owned(), token }
    }

    /// A request to `path` (starting with `/`).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends and returns the JSON body; an error answer becomes an error naming the problem
    /// (but 425 Too Early, which is an answer).
    pub async fn send(&self, request: RequestBuilder) -> anyhow::Result<(u16, Value)> {
        self.send_answering(request, &[StatusCode::TOO_EARLY]).await
    }

    /// As [`Client::send`], but the statuses in `answers` come back like a success.
    pub async fn send_answering(
        &self,
        request: RequestBuilder,
        answers: &[StatusCode],
    ) -> anyhow::Result<(u16, Value)> {
        let response = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the server at {}: {e}", self.base))?;
        decode(response, answers).await
    }

    /// GET `path` as JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.send(self.request(Method::GET, path)).await?.1)
    }
}

async fn decode(response: Response, answers: &[StatusCode]) -> anyhow::Result<(u16, Value)> {
    let answer = answers.contains(&response.status());
    let status = response.status().as_u16();
    let text = response.text().await?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status >= 400 && !answer {
        let detail = value.get("detail").and_then(Value::as_str).unwrap_or_default();
        let title = value.get("title").and_then(Value::as_str).unwrap_or("error");
        bail!("{status} {title}: {detail}");
    }
    Ok((status, value))
}
