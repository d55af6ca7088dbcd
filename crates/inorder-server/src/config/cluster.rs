//! `[cluster]`: this server as one node of several on one PostgreSQL (see `inorder::cluster`).

use std::time::Duration;

use inorder::{ClusterConfig, limits::NODE_ID_MAX_BYTES};
use serde::Deserialize;

use super::{postgres::StorageChoice, source::Source, values};

/// `[cluster]` as written.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// This node's id, unique among live nodes (default: `<hostname>-<pid>`).
    pub node: Option<String>,
    /// Partitions of each subscription's keys (default 16); the same on every node.
    #[serde(default, deserialize_with = "values::partitions")]
    pub partitions: Option<u16>,
    /// Lease time to live (default `10s`): a dead node's partitions move after it.
    #[serde(default, deserialize_with = "values::lease_ttl")]
    pub lease_ttl: Option<Duration>,
}

impl ClusterFile {
    /// The engine's cluster configuration; refused unless the storage is shared.
    pub(super) fn into_config(
        self,
        storage: &StorageChoice,
        source: &Source,
    ) -> anyhow::Result<ClusterConfig> {
        if matches!(storage, StorageChoice::File) {
            return Err(source.key_error(
                &["cluster"],
                "cluster mode needs storage = \"postgres\": the file storage belongs to one node",
            ));
        }
        let mut config = ClusterConfig::new(self.node.unwrap_or_else(default_node));
        if let Some(partitions) = self.partitions {
            config.partitions = partitions;
        }
        if let Some(ttl) = self.lease_ttl {
            config.lease_ttl = ttl;
        }
        config.validate().map_err(|e| source.key_error(&["cluster"], e))?;
        Ok(config)
    }
}

/// `<hostname>-<pid>`: unique among the processes of one host, and says where it runs.
fn default_node() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let mut node = format!("{host}-{}", std::process::id());
    if node.len() > NODE_ID_MAX_BYTES {
        node = format!("node-{}", std::process::id());
    }
    node
}
