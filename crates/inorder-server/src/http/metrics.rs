//! `GET /metrics`: Prometheus text format.
//!
//! Counters and histograms are recorded where things happen (the engine's handler calls and
//! publishes, stream restarts, every HTTP request); gauges that describe state — lag, live
//! workers, parked events, records per fsync — are refreshed from the engine when scraped. The
//! engine keeps `inorder_streams_failed` itself; the server registers it at 0 before the engine
//! starts, and each stream's `inorder_stream_restarts_total` at 0 when scraped, so both series
//! exist before anything goes wrong.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

use super::AppState;
use crate::problem::Problem;

/// Renders the metrics after refreshing the state gauges.
pub async fn render(State(state): State<Arc<AppState>>) -> Result<Response, Problem> {
    let Some(handle) = &state.metrics else {
        return Err(Problem::internal("no metrics recorder is installed"));
    };
    for subscription in state.engine.subscriptions().await? {
        for stream in &subscription.streams {
            let labels =
                [("subscription", subscription.name.clone()), ("topic", stream.topic.clone())];
            metrics::gauge!("inorder_lag", &labels).set(stream.lag as f64);
            metrics::gauge!("inorder_in_flight", &labels).set(stream.status.pending as f64);
            metrics::gauge!("inorder_live_workers", &labels).set(stream.status.live_workers as f64);
            metrics::gauge!("inorder_parked", &labels).set(stream.status.parked as f64);
            metrics::gauge!("inorder_watermark", &labels).set(stream.status.watermark as f64);
            metrics::counter!("inorder_stream_restarts_total", &labels).increment(0);
        }
    }
    for topic in state.engine.topics().await? {
        let name: inorder::Name =
            topic.name.parse().map_err(|e: inorder::LogError| Problem::internal(e.to_string()))?;
        if let Some(stats) = state.engine.storage().log_stats(&name).await? {
            let labels = [("topic", topic.name.clone())];
            metrics::gauge!("inorder_log_last_position", &labels).set(stats.last_position as f64);
            metrics::gauge!("inorder_log_records_total", &labels).set(stats.records as f64);
            metrics::gauge!("inorder_log_fsyncs_total", &labels).set(stats.data_syncs as f64);
            let per_fsync = stats.records as f64 / stats.data_syncs.max(1) as f64;
            metrics::gauge!("inorder_log_records_per_fsync", &labels).set(per_fsync);
        }
    }
    let mut response = handle.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    Ok(response)
}
