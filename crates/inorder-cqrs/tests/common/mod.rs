//! Fixtures of the CQRS tests: the `Account` aggregate (the "Grant" case) and engines on a
//! temporary directory that can restart.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use inorder::{Engine, EngineBuilder, EngineConfig};
use inorder_cqrs::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// How long tests wait for something that should happen quickly.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Calls of `Account::apply`, to see how much of a stream a load replayed.
pub static APPLIED: AtomicU64 = AtomicU64::new(0);

/// An account that grants from its funds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub funds: u64,
    pub granted: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCommand {
    Deposit(u64),
    Grant(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    Deposited { amount: u64 },
    Granted { amount: u64 },
}

impl DomainEvent for AccountEvent {
    fn action(&self) -> &'static str {
        match self {
            Self::Deposited { .. } => "account.deposited",
            Self::Granted { .. } => "account.granted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("insufficient funds: {available} available, {requested} requested")]
    InsufficientFunds { available: u64, requested: u64 },
    #[error("amounts must be positive")]
    ZeroAmount,
}

impl Aggregate for Account {
    const TOPIC: &'static str = "accounts";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match *command {
            AccountCommand::Deposit(0) | AccountCommand::Grant(0) => Err(AccountError::ZeroAmount),
            AccountCommand::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::Grant(amount) if amount > self.funds => {
                Err(AccountError::InsufficientFunds { available: self.funds, requested: amount })
            }
            AccountCommand::Grant(amount) => Ok(vec![AccountEvent::Granted { amount }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        APPLIED.fetch_add(1, Ordering::SeqCst);
        match *event {
            AccountEvent::Deposited { amount } => self.funds += amount,
            AccountEvent::Granted { amount } => {
                self.funds -= amount;
                self.granted += amount;
            }
        }
    }
}

/// An engine configuration with the account topics on `dir`.
pub fn config(dir: &std::path::Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    for topic in inorder_cqrs::aggregate::topics::<Account>() {
        config = config.topic(topic);
    }
    config
}

/// Starts `builder`.
pub async fn start(builder: EngineBuilder) -> Engine {
    builder.start().await.unwrap()
}

/// `count` engines ("nodes") of `config` on one fresh PostgreSQL database, each with its own
/// storage (connections, appender): what several `inorder serve` processes share.
pub async fn postgres_nodes(config: &EngineConfig, count: usize) -> Vec<Engine> {
    let url = inorder_testpg::fresh_database().unwrap();
    let mut nodes = Vec::with_capacity(count);
    for _ in 0..count {
        let storage = inorder_postgres::PgStorage::connect(
            &url,
            inorder_postgres::PgStorageOptions::default(),
        )
        .await
        .unwrap();
        let builder = Engine::builder(config.clone()).storage(std::sync::Arc::new(storage));
        nodes.push(builder.start().await.unwrap());
    }
    nodes
}
