//! Structured events read without building a JSON tree: an object's members, borrowed from the
//! request body, values left unparsed until the attribute they fill asks for them.
//!
//! `data` in particular is never parsed into a tree and re-serialized: its bytes are kept as
//! sent (serde_json still checks they are valid JSON). Both readers are bounded: an object may
//! have at most [`EVENT_MEMBERS_MAX`] members, a batch at most [`PUBLISH_BATCH_EVENTS_MAX`] events.

use std::{borrow::Cow, fmt};

use inorder::limits::PUBLISH_BATCH_EVENTS_MAX;
use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, SeqAccess, Visitor},
};
use serde_json::value::RawValue;

use crate::limits::{BATCH_EVENTS_PREALLOCATED, EVENT_CORE_MEMBERS_MAX, EVENT_MEMBERS_MAX};

/// A JSON object's members in body order, values unparsed.
pub struct Members<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

/// The items of a JSON array, unparsed.
pub struct Items<'a>(pub Vec<&'a RawValue>);

/// A member name, borrowed unless it holds escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an attribute name")
            }
            fn visit_borrowed_str<E: de::Error>(self, name: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(name)))
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(name.to_owned())))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(EVENT_CORE_MEMBERS_MAX);
                while let Some(Name(name)) = map.next_key()? {
                    if members.len() == EVENT_MEMBERS_MAX {
                        return Err(de::Error::custom(format!(
                            "more than {EVENT_MEMBERS_MAX} attributes"
                        )));
                    }
                    members.push((name, map.next_value::<&RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

impl<'de> Deserialize<'de> for Items<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemsVisitor;
        impl<'de> Visitor<'de> for ItemsVisitor {
            type Value = Items<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items =
                    Vec::with_capacity(seq.size_hint().unwrap_or(0).min(BATCH_EVENTS_PREALLOCATED));
                while let Some(item) = seq.next_element::<&RawValue>()? {
                    if items.len() == PUBLISH_BATCH_EVENTS_MAX {
                        return Err(de::Error::custom(format!(
                            "more than {PUBLISH_BATCH_EVENTS_MAX} events in one batch"
                        )));
                    }
                    items.push(item);
                }
                Ok(Items(items))
            }
        }
        deserializer.deserialize_seq(ItemsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_borrow_names_and_keep_values_as_sent() {
        let body = r#"{"type": "a", "d\u0061ta": {"x":  [1, 2]}}"#;
        let Members(members) = serde_json::from_str(body).unwrap();
        assert!(matches!(members[0].0, Cow::Borrowed("type")));
        assert_eq!((members[1].0.as_ref(), members[1].1.get()), ("data", r#"{"x":  [1, 2]}"#));
    }

    #[test]
    fn objects_and_batches_are_bounded() {
        let wide: String =
            (0..=EVENT_MEMBERS_MAX).map(|i| format!("\"a{i}\":1")).collect::<Vec<_>>().join(",");
        let error = serde_json::from_str::<Members<'_>>(&format!("{{{wide}}}")).err().unwrap();
        assert!(error.to_string().contains("attributes"), "{error}");
        let long = vec!["{}"; PUBLISH_BATCH_EVENTS_MAX + 1].join(",");
        let error = serde_json::from_str::<Items<'_>>(&format!("[{long}]")).err().unwrap();
        assert!(error.to_string().contains("events in one batch"), "{error}");
    }
}
