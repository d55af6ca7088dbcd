//! `read_your_writes`: posts and `post_with_comments_counts`. A `Post` aggregate takes
//! commands; the `post_counts` projector keeps a read model of each post with its number of
//! comments; an HTTP-style read answers `425 Too Early` while the projection has not processed
//! the caller's last write, then `200`. Strong dispatch returns only once the projector has it.
//! Finally the read model is rebuilt from the first event; the library reports the rebuild's
//! progress and this program draws it as a bar with events/s and ETA.
//!
//! Run: `cargo run -p inorder-cqrs --example read_your_writes`

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use inorder::{Engine, EngineConfig, Event, HandlerError};
use inorder_cqrs::{
    Aggregate, BusOptions, CommandBus, Dispatch, DomainEvent, Projection, Projector,
    RebuildProgress, StartMode, projector::follow_rebuild,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A post: published once, then commented.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Post {
    published: bool,
}

/// Commands of a post.
pub enum PostCommand {
    /// Publish it with a title.
    Publish(String),
    /// Comment on it.
    Comment(String),
}

/// Events of a post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PostEvent {
    /// Published.
    Published { title: String },
    /// Commented.
    Commented { text: String },
}

impl DomainEvent for PostEvent {
    fn action(&self) -> &'static str {
        match self {
            Self::Published { .. } => "post.published",
            Self::Commented { .. } => "post.commented",
        }
    }
}

/// Why a post refuses a command.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// Publish twice.
    #[error("already published")]
    AlreadyPublished,
    /// Comment on a post that does not exist.
    #[error("no such post")]
    NotPublished,
}

impl Aggregate for Post {
    const TOPIC: &'static str = "posts";
    type Command = PostCommand;
    type Event = PostEvent;
    type Error = PostError;

    fn handle(&self, command: &PostCommand) -> Result<Vec<PostEvent>, PostError> {
        match (command, self.published) {
            (PostCommand::Publish(_), true) => Err(PostError::AlreadyPublished),
            (PostCommand::Publish(title), false) => {
                Ok(vec![PostEvent::Published { title: title.clone() }])
            }
            (PostCommand::Comment(_), false) => Err(PostError::NotPublished),
            (PostCommand::Comment(text), true) => {
                Ok(vec![PostEvent::Commented { text: text.clone() }])
            }
        }
    }

    fn apply(&mut self, event: &PostEvent) {
        if let PostEvent::Published { .. } = event {
            self.published = true;
        }
    }
}

/// The read model `post_with_comments_counts`: post → (title, comments). A gate lets the
/// example hold the projector back to show a 425.
#[derive(Default)]
pub struct PostCounts {
    rows: Mutex<BTreeMap<String, (String, u64)>>,
    gate: Option<Arc<Semaphore>>,
}

#[async_trait::async_trait]
impl Projector for PostCounts {
    async fn project(&self, event: &Event) -> Result<(), HandlerError> {
        if let Some(gate) = &self.gate {
            gate.acquire().await.map_err(|_| HandlerError::retry("gate closed"))?.forget();
        }
        let decoded: PostEvent = serde_json::from_slice(&event.data)
            .map_err(|e| HandlerError::permanent(e.to_string()))?;
        let mut rows = self.rows.lock();
        let row = rows.entry(event.key.clone()).or_default();
        match decoded {
            PostEvent::Published { title } => row.0 = title,
            PostEvent::Commented { .. } => row.1 += 1,
        }
        Ok(())
    }

    async fn reset(&self) -> Result<(), HandlerError> {
        self.rows.lock().clear();
        Ok(())
    }
}

/// `GET /posts/{id}` with the position of the caller's last write (from a header, say):
/// 425 until the projection has processed it, then 200 with the row.
pub async fn get_post(
    engine: &Engine,
    counts: &PostCounts,
    id: &str,
    seen: u64,
) -> Result<(u16, String), BoxError> {
    if !engine.processed_by("post_counts", "posts", seen).await? {
        return Ok((425, "Too Early: the projection has not caught up yet".into()));
    }
    let rows = counts.rows.lock();
    Ok(match rows.get(id) {
        Some((title, comments)) => (200, format!("{title}: {comments} comments")),
        None => (404, "no such post".into()),
    })
}

fn start(
    dir: &Path,
    projection: &Projection<PostCounts>,
    mode: StartMode,
) -> inorder::EngineBuilder {
    let mut config = EngineConfig::new(dir).subscription(projection.subscription());
    for topic in inorder_cqrs::aggregate::topics::<Post>() {
        config = config.topic(topic);
    }
    projection.install(Engine::builder(config), mode)
}

/// Waits for the rebuild of projection `name`, drawing its progress on the terminal (events/s,
/// ETA; nothing when stderr is not a terminal); returns how many events it replayed.
pub async fn follow_rebuild_with_a_bar(engine: &Engine, name: &str) -> Result<u64, BoxError> {
    let style =
        ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} events ({per_sec}, ETA {eta})")?;
    let bar = ProgressBar::new(0).with_style(style).with_message(format!("rebuilding {name}"));
    let replayed = follow_rebuild(engine, name, |progress: RebuildProgress| {
        bar.set_length(progress.total);
        bar.set_position(progress.handled);
    })
    .await?;
    bar.finish_with_message(format!("rebuilt {name}"));
    Ok(replayed)
}

/// Writes, reads early and late, strong dispatch, then a rebuild; returns the answers.
pub async fn run(dir: &Path) -> Result<Vec<(u16, String)>, BoxError> {
    let gate = Arc::new(Semaphore::new(0));
    let counts = Arc::new(PostCounts { gate: Some(Arc::clone(&gate)), ..PostCounts::default() });
    let projection = Projection::new("post_counts", ["posts"], Arc::clone(&counts));
    let engine = start(dir, &projection, StartMode::FromCheckpoint).start().await?;
    let posts = CommandBus::<Post>::new(engine.clone(), BusOptions::default())?;
    let mut answers = Vec::new();

    posts.execute("p-1", PostCommand::Publish("Hello".into())).await?;
    let written = posts.execute("p-1", PostCommand::Comment("first!".into())).await?;
    let seen = written.positions[0];
    answers.push(get_post(&engine, &counts, "p-1", seen).await?); // the projector is held: 425
    gate.add_permits(Semaphore::MAX_PERMITS / 2);
    engine.wait_processed("posts", seen, Some("post_counts"), Duration::from_secs(20)).await?;
    answers.push(get_post(&engine, &counts, "p-1", seen).await?); // caught up: 200

    // Strong dispatch: when the command returns, the read model has the comment.
    let strong = Dispatch::strong(["post_counts"]);
    let written = posts.execute_with("p-1", PostCommand::Comment("second".into()), strong).await?;
    answers.push(get_post(&engine, &counts, "p-1", written.positions[0]).await?);
    engine.shutdown().await;

    // Rebuild the read model from the first event, with a progress bar.
    let rebuilt = Arc::new(PostCounts::default());
    let projection = Projection::new("post_counts", ["posts"], Arc::clone(&rebuilt));
    let engine = start(dir, &projection, StartMode::Rebuild).start().await?;
    let replayed = follow_rebuild_with_a_bar(&engine, "post_counts").await?;
    println!("rebuilt post_counts from {replayed} events");
    answers.push(get_post(&engine, &rebuilt, "p-1", written.positions[0]).await?);
    engine.shutdown().await;
    Ok(answers)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    for (status, body) in run(dir.path()).await? {
        println!("GET /posts/p-1 → {status} {body}");
    }
    Ok(())
}
