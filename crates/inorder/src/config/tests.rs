use super::*;

#[test]
fn patterns_are_anchored_at_both_ends() {
    let pattern = TopicPattern::new(r"user\..*").unwrap();
    assert!(pattern.matches("user.created"));
    assert!(!pattern.matches("superuser.x"), "the original EventBus matched prefixes only");
    assert!(!pattern.matches("user"));
    let alternatives = TopicPattern::new("a|b").unwrap();
    assert!(alternatives.matches("a") && alternatives.matches("b"));
    assert!(!alternatives.matches("ab"), "alternation stays inside the anchors");
}

#[test]
fn backoff_grows_by_the_factor_and_stops_at_the_cap() {
    let retry = RetryPolicy {
        initial: Duration::from_millis(100),
        factor: 2.0,
        max_delay: Duration::from_millis(500),
        max_attempts: 10,
        jitter: 0.5,
    };
    let delays: Vec<_> = (1..=5).map(|a| retry.base_delay(a).as_millis()).collect();
    assert_eq!(delays, [100, 200, 400, 500, 500]);
    for attempt in 1..=5 {
        let base = retry.base_delay(attempt);
        let jittered = retry.delay(attempt);
        assert!(jittered <= base && jittered >= base / 2, "{jittered:?} vs {base:?}");
    }
}

#[test]
fn a_bad_configuration_names_what_is_wrong() {
    let config = EngineConfig::new("/tmp/x")
        .topic(TopicConfig::new("orders").actions(["a", "a"]))
        .subscription(SubscriptionConfig::new("s", ["orders"]));
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("orders") && err.contains("twice"), "{err}");

    let config = EngineConfig::new("/tmp/x").subscription(SubscriptionConfig::new("s", ["nope"]));
    assert!(config.validate().unwrap_err().to_string().contains("nope"));

    let config = EngineConfig::new("/tmp/x")
        .topic(TopicConfig::new("t"))
        .subscription(SubscriptionConfig::new("s", ["t"]).pattern("("));
    assert!(config.validate().unwrap_err().to_string().contains("pattern"));
}

#[test]
fn durations_above_their_maximum_are_refused_naming_it() {
    let huge = Duration::from_secs(10_000_000_000_000_000_000);
    let config = EngineConfig::new("/tmp/x").topic(TopicConfig::new("t").sequence_timeout(huge));
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("sequence_timeout") && err.contains("2592000s"), "{err}");

    let retry = RetryPolicy { max_delay: huge, ..RetryPolicy::default() };
    let config = EngineConfig::new("/tmp/x")
        .topic(TopicConfig::new("t"))
        .subscription(SubscriptionConfig::new("s", ["t"]).retry(retry));
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("max_delay") && err.contains("86400s"), "{err}");

    let mut config = EngineConfig::new("/tmp/x");
    config.max_topics = 0;
    assert!(config.validate().unwrap_err().to_string().contains("max_topics"));
}

#[test]
fn the_backoff_of_a_huge_attempt_number_is_the_cap_not_a_panic() {
    let retry = RetryPolicy::default();
    assert_eq!(retry.base_delay(u32::MAX), retry.max_delay);
}
