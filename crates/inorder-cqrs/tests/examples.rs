//! Every example runs here, and its outcome is checked: the examples are part of the contract.
//! The `Post` aggregate of `read_your_writes` also has its rules checked as given/when/then specs.

#![allow(clippy::unwrap_used, dead_code, missing_docs)]

#[path = "../examples/late_fees.rs"]
mod late_fees;
#[path = "../examples/membership.rs"]
mod membership;
#[path = "../examples/purchase_flow.rs"]
mod purchase_flow;
#[path = "../examples/read_your_writes.rs"]
mod read_your_writes;

use inorder_cqrs::testing::AggregateSpec;
use read_your_writes::{
    Post,
    PostCommand::*,
    PostError::{AlreadyPublished, NotPublished},
    PostEvent::*,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_flow_handles_each_users_actions_in_the_topics_order() {
    let dir = tempfile::tempdir().unwrap();
    let handled = purchase_flow::run(dir.path()).await.unwrap();
    assert_eq!(handled.len(), 3);
    for (user, actions) in handled {
        assert_eq!(actions, ["user.created", "user.purchased", "user.paid"], "{user}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_fees_charges_each_overdue_day_once_across_a_redeploy() {
    let dir = tempfile::tempdir().unwrap();
    let fees = late_fees::run(dir.path()).await.unwrap();
    let expected = [("atlas", "2026-11-03"), ("atlas", "2026-11-04"), ("atlas", "2026-11-05")];
    let fees: Vec<(&str, &str)> = fees.iter().map(|(i, d)| (i.as_str(), d.as_str())).collect();
    assert_eq!(fees, expected, "bible was returned on its due date; atlas is late from the 3rd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_validates_joins_against_state_from_three_topics() {
    let dir = tempfile::tempdir().unwrap();
    let outcomes = membership::run(dir.path()).await.unwrap();
    let verdicts: Vec<&str> = outcomes
        .iter()
        .map(|o| if o.contains(": ok") { "ok" } else { o.rsplit(", ").next().unwrap() })
        .collect();
    assert_eq!(
        verdicts,
        [
            "ok",
            "ann already belongs to chess",
            "ben is suspended",
            "cid is not a member",
            "club go is not open",
            "ok",
            "ann already belongs to chess", // after a restart: rebuilt from the topics
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_answers_425_until_the_projection_caught_up_then_200() {
    let dir = tempfile::tempdir().unwrap();
    let answers = read_your_writes::run(dir.path()).await.unwrap();
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses, [425, 200, 200, 200]);
    assert_eq!(answers[1].1, "Hello: 1 comments");
    assert_eq!(answers[2].1, "Hello: 2 comments", "strong dispatch: the write is visible");
    assert_eq!(answers[3].1, "Hello: 2 comments", "the rebuilt read model is the same");
}

type PostSpec = AggregateSpec<Post>;

#[test]
fn spec_a_new_post_is_published_with_its_title() {
    PostSpec::given_no_events()
        .when(Publish("Hello".into()))
        .then_expect_events([Published { title: "Hello".into() }]);
}

#[test]
fn spec_a_published_post_takes_comments_but_is_not_published_again() {
    let published = || PostSpec::given([Published { title: "Hello".into() }]);
    published()
        .when(Comment("first!".into()))
        .then_expect_events([Commented { text: "first!".into() }]);
    published().when(Publish("Hello again".into())).then_expect_error(AlreadyPublished);
}

#[test]
fn spec_a_post_that_was_never_published_takes_no_comment() {
    PostSpec::given_no_events().when(Comment("first!".into())).then_expect_error(NotPublished);
}
