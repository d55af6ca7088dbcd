//! `membership`: a cross-stream aggregate. Whether a member may join a club depends on events
//! of three topics (members, clubs, memberships) and many keys; the state is kept in memory,
//! rebuilt on start, and the `Join` command is validated against it before anything is appended.
//!
//! Run: `cargo run -p inorder-cqrs --example membership`

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use inorder::{Engine, EngineConfig, Event, TopicConfig};
use inorder_cqrs::{CommandError, CrossAggregate, CrossStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who is registered (and active), which clubs are open, who joined what.
#[derive(Default)]
pub struct Membership {
    active: BTreeMap<String, bool>,
    open_clubs: BTreeSet<String>,
    joined: BTreeSet<(String, String)>,
}

/// Join a club.
pub struct Join {
    /// The member.
    pub member: String,
    /// The club.
    pub club: String,
}

/// Why a join is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// Not registered.
    #[error("{0} is not a member")]
    UnknownMember(String),
    /// Suspended.
    #[error("{0} is suspended")]
    Suspended(String),
    /// No such open club.
    #[error("club {0} is not open")]
    ClubNotOpen(String),
    /// Joined before.
    #[error("{0} already belongs to {1}")]
    AlreadyMember(String, String),
}

impl CrossAggregate for Membership {
    type Command = Join;
    type Error = JoinError;

    fn topics() -> Vec<String> {
        vec!["members".into(), "clubs".into(), "memberships".into()]
    }

    fn apply(&mut self, event: &Event) {
        let club = || event.json().ok().and_then(|d| d["club"].as_str().map(String::from));
        match event.action.as_str() {
            "member.registered" => {
                self.active.insert(event.key.clone(), true);
            }
            "member.suspended" => {
                self.active.insert(event.key.clone(), false);
            }
            "club.opened" => {
                self.open_clubs.insert(event.key.clone());
            }
            "membership.joined" => {
                if let Some(club) = club() {
                    self.joined.insert((event.key.clone(), club));
                }
            }
            _ => {}
        }
    }

    fn handle(&self, join: &Join) -> Result<Vec<Event>, JoinError> {
        let (member, club) = (join.member.clone(), join.club.clone());
        match self.active.get(&member) {
            None => return Err(JoinError::UnknownMember(member)),
            Some(false) => return Err(JoinError::Suspended(member)),
            Some(true) => {}
        }
        if !self.open_clubs.contains(&club) {
            return Err(JoinError::ClubNotOpen(club));
        }
        if self.joined.contains(&(member.clone(), club.clone())) {
            return Err(JoinError::AlreadyMember(member, club));
        }
        let event = Event::builder("memberships", &member, "membership.joined")
            .id(format!("joined:{member}:{club}")) // a second decision of the same join conflicts
            .json(&serde_json::json!({ "club": club }))
            .build()
            .map_err(|_| JoinError::UnknownMember(member))?;
        Ok(vec![event])
    }
}

fn config(dir: &Path) -> EngineConfig {
    ["members", "clubs", "memberships"]
        .into_iter()
        .fold(EngineConfig::new(dir), |config, topic| config.topic(TopicConfig::new(topic)))
}

async fn join(
    stream: &CrossStream<Membership>,
    member: &str,
    club: &str,
) -> Result<String, BoxError> {
    let command = Join { member: member.into(), club: club.into() };
    Ok(match stream.execute(command).await {
        Ok(positions) => format!("{member} joins {club}: ok (position {})", positions[0]),
        Err(CommandError::Rejected(refused)) => {
            format!("{member} joins {club}: refused, {refused}")
        }
        Err(CommandError::Failed(error)) => return Err(error.into()),
    })
}

/// Registers members and clubs, runs joins (before and after a restart); returns the outcomes.
pub async fn run(dir: &Path) -> Result<Vec<String>, BoxError> {
    let engine = Engine::builder(config(dir)).start().await?;
    let publish = |topic: &str, key: &str, action: &str| {
        let event = Event::builder(topic, key, action).build();
        let engine = engine.clone();
        async move { engine.publish(event?).await }
    };
    publish("members", "ann", "member.registered").await?;
    publish("members", "ben", "member.registered").await?;
    publish("members", "ben", "member.suspended").await?;
    publish("clubs", "chess", "club.opened").await?;
    let stream = CrossStream::<Membership>::start(engine.clone()).await?;
    let mut outcomes = Vec::new();
    for (member, club) in
        [("ann", "chess"), ("ann", "chess"), ("ben", "chess"), ("cid", "chess"), ("ann", "go")]
    {
        outcomes.push(join(&stream, member, club).await?);
    }
    // Events appended after start are seen by the next command (caught up before deciding).
    publish("members", "cid", "member.registered").await?;
    outcomes.push(join(&stream, "cid", "chess").await?);
    engine.shutdown().await;

    // Restarted: the state is rebuilt from the three topics.
    let engine = Engine::builder(config(dir)).start().await?;
    let stream = CrossStream::<Membership>::start(engine.clone()).await?;
    outcomes.push(join(&stream, "ann", "chess").await?);
    engine.shutdown().await;
    Ok(outcomes)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    for outcome in run(dir.path()).await? {
        println!("{outcome}");
    }
    Ok(())
}
