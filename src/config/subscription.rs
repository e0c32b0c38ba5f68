//! `kind: Subscription` v1alpha1 (`route`) and v2alpha1 (`routes`), and the
//! same shape as the app's programmatic `GET /dapr/subscribe` answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use crate::report::doc::{scalar_text, DocCtx};

/// One routing rule: `match` (CEL; empty = always) and the app path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// CEL expression over `event`; empty matches everything.
    #[serde(rename = "match", default, skip_serializing_if = "String::is_empty")]
    pub match_expr: String,
    /// The app path the event is POSTed to.
    pub path: String,
}

/// `bulkSubscribe` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkSubscribe {
    /// Deliver in batches.
    #[serde(default)]
    pub enabled: bool,
    /// Largest batch.
    #[serde(default)]
    pub max_messages_count: Option<u32>,
    /// Longest wait for a batch to fill.
    #[serde(default)]
    pub max_await_duration_ms: Option<u32>,
}

/// Where a subscription came from, as the metadata API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionSource {
    /// A `Subscription` YAML document.
    Declarative,
    /// The app's `GET /dapr/subscribe`.
    Programmatic,
    /// A gRPC streaming subscription (`SubscribeTopicEventsAlpha1`).
    Streaming,
}

/// A subscription, declarative or programmatic, with rules in order and the
/// default last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// `metadata.name` (empty for programmatic ones).
    pub name: String,
    /// Pub/sub component name.
    pub pubsubname: String,
    /// Topic.
    pub topic: String,
    /// Rules in order; a rule with an empty match is a default.
    pub rules: Vec<Route>,
    /// `deadLetterTopic`, if set.
    pub dead_letter_topic: Option<String>,
    /// `bulkSubscribe`.
    pub bulk: BulkSubscribe,
    /// Subscription metadata (`rawPayload`, ...).
    pub metadata: BTreeMap<String, String>,
    /// Declarative or programmatic.
    pub source: SubscriptionSource,
}

/// One item of the app's `GET /dapr/subscribe` answer, after its keys were
/// matched as Go's `encoding/json` matches them (see [`programmatic`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgrammaticSubscription {
    /// Pub/sub component.
    #[serde(default)]
    pub pubsubname: String,
    /// Topic.
    #[serde(default)]
    pub topic: String,
    /// v1 single route.
    #[serde(default)]
    pub route: String,
    /// v2 rules.
    #[serde(default)]
    pub routes: Option<ProgrammaticRoutes>,
    /// Dead-letter topic.
    #[serde(default)]
    pub dead_letter_topic: String,
    /// Subscription metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Bulk settings.
    #[serde(default)]
    pub bulk_subscribe: Option<BulkSubscribe>,
}

/// `routes` of a programmatic subscription.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ProgrammaticRoutes {
    /// Rules in order.
    #[serde(default)]
    pub rules: Vec<Route>,
    /// Default path.
    #[serde(default)]
    pub default: String,
}

/// The JSON names of Dapr's `SubscriptionJSON` and of its nested structs
/// (`dapr/pkg/runtime/pubsub/subscriptions.go`).
const ITEM_FIELDS: &[&str] = &[
    "pubsubname",
    "topic",
    "route",
    "routes",
    "deadLetterTopic",
    "metadata",
    "bulkSubscribe",
];
const ROUTES_FIELDS: &[&str] = &["rules", "default"];
const RULE_FIELDS: &[&str] = &["match", "path"];
const BULK_FIELDS: &[&str] = &["enabled", "maxMessagesCount", "maxAwaitDurationMs"];

/// Renames the keys of a JSON object to the struct's field names as Go's
/// `encoding/json` matches them: an exact match first, else a match that
/// ignores case (so the Java and .NET SDKs' `pubsubName` is
/// `pubsubname`); unknown keys are dropped, and a `null` leaves the field
/// at its zero value. Anything but an object is returned as it is (the
/// typed decode then says what is wrong).
fn go_keys(value: serde_json::Value, fields: &[&str]) -> serde_json::Value {
    let serde_json::Value::Object(map) = value else {
        return value;
    };
    let mut out = serde_json::Map::new();
    let exact: Vec<&str> = map
        .keys()
        .filter(|k| fields.contains(&k.as_str()))
        .map(String::as_str)
        .collect();
    for (key, v) in &map {
        if v.is_null() {
            continue;
        }
        let Some(field) = fields.iter().find(|f| f.eq_ignore_ascii_case(key)) else {
            continue;
        };
        // `pubsubname` beats `PubsubName` when an app sends both.
        if key != field && exact.contains(field) {
            continue;
        }
        out.insert((*field).to_owned(), v.clone());
    }
    serde_json::Value::Object(out)
}

/// Go decodes a `null` map value as the empty string.
fn go_string_map(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, if v.is_null() { "".into() } else { v }))
                .collect(),
        ),
        other => other,
    }
}

/// One item of `GET /dapr/subscribe`, keys matched as Go matches them.
fn programmatic_item(item: serde_json::Value) -> Result<SubscriptionSpec, String> {
    use serde_json::Value as J;
    let J::Object(_) = item else {
        return Err("not a JSON object".into());
    };
    let J::Object(mut m) = go_keys(item, ITEM_FIELDS) else {
        unreachable!("go_keys keeps an object an object");
    };
    if let Some(routes) = m.remove("routes") {
        let routes = match go_keys(routes, ROUTES_FIELDS) {
            J::Object(mut r) => {
                if let Some(J::Array(rules)) = r.remove("rules") {
                    let rules = rules.into_iter().map(|x| go_keys(x, RULE_FIELDS));
                    r.insert("rules".into(), J::Array(rules.collect()));
                }
                J::Object(r)
            }
            other => other,
        };
        m.insert("routes".into(), routes);
    }
    if let Some(bulk) = m.remove("bulkSubscribe") {
        m.insert("bulkSubscribe".into(), go_keys(bulk, BULK_FIELDS));
    }
    if let Some(md) = m.remove("metadata") {
        m.insert("metadata".into(), go_string_map(md));
    }
    let item: ProgrammaticSubscription =
        serde_json::from_value(J::Object(m)).map_err(|e| e.to_string())?;
    item.into_spec()
}

/// The app's `GET /dapr/subscribe` answer, decoded as daprd decodes it
/// (Go's `encoding/json`: keys matched ignoring case, unknown keys
/// ignored). `Err` when the body is not a JSON list. An item that cannot
/// be used (a wrong type, no `pubsubname`, `topic` or route) is left out
/// and described in the second list, `item N (pubsub/topic): why`, instead
/// of failing the whole answer as Go's decoder would.
pub fn programmatic(body: &[u8]) -> Result<(Vec<SubscriptionSpec>, Vec<String>), String> {
    let items: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| format!("not a JSON list of subscriptions: {e}"))?;
    let mut specs = vec![];
    let mut skipped = vec![];
    for (i, item) in items.into_iter().enumerate() {
        let name = |key: &str| {
            item.as_object()
                .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)))
                .and_then(|(_, v)| v.as_str())
                .unwrap_or("?")
                .to_owned()
        };
        let what = format!("item {i} ({}/{})", name("pubsubname"), name("topic"));
        match programmatic_item(item) {
            Ok(spec) => specs.push(spec),
            Err(why) => skipped.push(format!("{what}: {why}")),
        }
    }
    Ok((specs, skipped))
}

impl ProgrammaticSubscription {
    /// Dapr's rule building: rules in order, then `routes.default` else
    /// `route`. An error when the item names no pub/sub, topic or route.
    pub fn into_spec(self) -> Result<SubscriptionSpec, String> {
        if self.pubsubname.is_empty() {
            return Err("no pubsubname".into());
        }
        if self.topic.is_empty() {
            return Err("no topic".into());
        }
        let routes = self.routes.unwrap_or_default();
        let default = if routes.default.is_empty() {
            self.route
        } else {
            routes.default
        };
        let rules = build_rules(routes.rules, default);
        if rules.is_empty() {
            return Err("no route (route, routes.default or routes.rules)".into());
        }
        check_metadata(&self.metadata)?;
        Ok(SubscriptionSpec {
            name: String::new(),
            pubsubname: self.pubsubname,
            topic: self.topic,
            rules,
            dead_letter_topic: Some(self.dead_letter_topic).filter(|s| !s.is_empty()),
            bulk: self.bulk_subscribe.unwrap_or_default(),
            metadata: self.metadata,
            source: SubscriptionSource::Programmatic,
        })
    }
}

/// Subscription metadata asking for what Perch does not do: Kafka's
/// `valueSchemaType: Avro` (daprd decodes Avro through the schema
/// registry; Perch would hand the app raw Avro bytes).
fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), String> {
    let avro = metadata.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("valueSchemaType") && v.trim().eq_ignore_ascii_case("avro")
    });
    if avro {
        return Err("valueSchemaType Avro: Perch does not decode Avro through a schema registry (JSON and None are fine)".into());
    }
    Ok(())
}

/// The rules, then the default route. Paths stay as written, as daprd
/// keeps them: the HTTP app client puts the `/` before a path without one,
/// and a gRPC app is sent the path itself (the Python SDK routes a path
/// equal to a topic name it serves, without the slash).
fn build_rules(mut rules: Vec<Route>, default: String) -> Vec<Route> {
    if !default.is_empty() {
        rules.push(Route {
            match_expr: String::new(),
            path: default,
        });
    }
    rules
}

/// Reads a Subscription document (`v2` selects v2alpha1's `routes`).
pub fn read(ctx: &mut DocCtx<'_>, name: &str, doc: &Mapping, v2: bool) -> Option<SubscriptionSpec> {
    let spec = ctx.spec(doc, &[])?;
    let route_key = if v2 { "routes" } else { "route" };
    ctx.unknown_keys(
        spec,
        "spec",
        &[
            "pubsubname",
            "topic",
            route_key,
            "deadLetterTopic",
            "bulkSubscribe",
            "metadata",
        ],
    );
    let before = ctx.problems.len();
    let pubsubname = ctx.required_string(spec, "spec", "pubsubname");
    let topic = ctx.required_string(spec, "spec", "topic");
    let mut rules = Vec::new();
    let mut default = String::new();
    if v2 {
        if let Some(routes) = ctx.mapping(spec, "spec", "routes") {
            ctx.unknown_keys(routes, "spec.routes", &["rules", "default"]);
            default = ctx
                .string(routes, "spec.routes", "default")
                .unwrap_or_default();
            match routes.get("rules") {
                None | Some(Value::Null) => {}
                Some(Value::Sequence(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let p = format!("spec.routes.rules[{i}]");
                        let Some(m) = item.as_mapping() else {
                            ctx.problem(p, "must be a mapping with match and path");
                            continue;
                        };
                        ctx.unknown_keys(m, &p, &["match", "path"]);
                        let match_expr = m.get("match").and_then(scalar_text).unwrap_or_default();
                        if !match_expr.trim().is_empty() {
                            if let Err(e) = crate::expr::compile(match_expr.trim()) {
                                ctx.problem(
                                    format!("{p}.match"),
                                    format!(
                                        "subscription {name:?}: match expression {:?} does not compile: {e}",
                                        match_expr.trim()
                                    ),
                                );
                            }
                        }
                        if let Some(path) = ctx.required_string(m, &p, "path") {
                            rules.push(Route { match_expr, path });
                        }
                    }
                }
                Some(_) => ctx.problem("spec.routes.rules", "must be a list"),
            }
        }
    } else {
        default = ctx.string(spec, "spec", "route").unwrap_or_default();
    }
    let rules = build_rules(rules, default);
    if rules.is_empty() {
        ctx.problem(
            format!("spec.{route_key}"),
            if v2 {
                "needs routes.default or at least one routes.rules entry"
            } else {
                "missing required field"
            },
        );
    }
    let dead_letter_topic = ctx
        .string(spec, "spec", "deadLetterTopic")
        .filter(|s| !s.is_empty());
    let bulk = match ctx.mapping(spec, "spec", "bulkSubscribe") {
        None => BulkSubscribe::default(),
        Some(b) => {
            ctx.unknown_keys(
                b,
                "spec.bulkSubscribe",
                &["enabled", "maxMessagesCount", "maxAwaitDurationMs"],
            );
            BulkSubscribe {
                enabled: ctx
                    .bool(b, "spec.bulkSubscribe", "enabled")
                    .unwrap_or(false),
                max_messages_count: ctx
                    .integer(b, "spec.bulkSubscribe", "maxMessagesCount", 1, 100_000)
                    .map(|n| n as u32),
                max_await_duration_ms: ctx
                    .integer(b, "spec.bulkSubscribe", "maxAwaitDurationMs", 0, 3_600_000)
                    .map(|n| n as u32),
            }
        }
    };
    let mut metadata = BTreeMap::new();
    if let Some(m) = ctx.mapping(spec, "spec", "metadata") {
        for (k, v) in m {
            let key = scalar_text(k).unwrap_or_default();
            match scalar_text(v) {
                Some(s) => {
                    metadata.insert(key, s);
                }
                None => ctx.problem(format!("spec.metadata.{key}"), "must be a string"),
            }
        }
    }
    if let Err(e) = check_metadata(&metadata) {
        ctx.problem("spec.metadata.valueSchemaType", e);
    }
    if ctx.problems.len() != before {
        return None;
    }
    Some(SubscriptionSpec {
        name: name.to_owned(),
        pubsubname: pubsubname?,
        topic: topic?,
        rules,
        dead_letter_topic,
        bulk,
        metadata,
        source: SubscriptionSource::Declarative,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(s: &SubscriptionSpec) -> Vec<(&str, &str)> {
        s.rules
            .iter()
            .map(|r| (r.match_expr.as_str(), r.path.as_str()))
            .collect()
    }

    /// Review C1: Spring Boot's `@Topic` serialises `pubsubName`; daprd
    /// (Go, keys matched ignoring case) takes it, and so must Perch.
    #[test]
    fn the_java_spring_boot_answer_is_read_as_daprd_reads_it() {
        let body = include_bytes!("../../tests/fixtures/subscribe/java-springboot.json");
        let (specs, skipped) = programmatic(body).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[0].pubsubname, "messagebus");
        assert_eq!(specs[0].topic, "testingtopic");
        assert_eq!(paths(&specs[0]), [("", "/testingtopic")]);
        assert_eq!(
            specs[0].dead_letter_topic, None,
            "an empty deadLetterTopic is none"
        );
        assert_eq!(
            paths(&specs[1]),
            [
                ("event.type == 'v2'", "/testingtopicV2"),
                ("", "/testingtopic")
            ]
        );
        assert_eq!(specs[2].dead_letter_topic.as_deref(), Some("deadletters"));
        assert_eq!(specs[2].metadata["rawPayload"], "false");
        assert!(specs[2].bulk.enabled);
        assert_eq!(specs[2].bulk.max_messages_count, Some(100));
        assert_eq!(specs[2].bulk.max_await_duration_ms, Some(1000));
    }

    #[test]
    fn the_dotnet_aspnetcore_answer_is_read_as_daprd_reads_it() {
        let body = include_bytes!("../../tests/fixtures/subscribe/dotnet-aspnetcore.json");
        let (specs, skipped) = programmatic(body).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        let topics: Vec<&str> = specs.iter().map(|s| s.topic.as_str()).collect();
        assert_eq!(topics, ["deposit", "withdraw", "rawDeposit", "bulk"]);
        assert!(specs.iter().all(|s| s.pubsubname == "pubsub"));
        assert_eq!(paths(&specs[0]), [("", "/deposit")]);
        assert_eq!(
            specs[0].dead_letter_topic.as_deref(),
            Some("amountDeadLetterTopic")
        );
        assert_eq!(
            paths(&specs[1]),
            [
                ("event.type == \"withdraw.v2\"", "/withdraw.v2"),
                ("", "/withdraw")
            ]
        );
        assert_eq!(specs[2].metadata["rawPayload"], "true");
        assert_eq!(specs[3].bulk.max_await_duration_ms, Some(40));
    }

    #[test]
    fn keys_match_ignoring_case_and_unknown_keys_are_ignored() {
        let body = br#"[{"PUBSUBNAME":"p","Topic":"t","ROUTE":"x","DeadLetterTopic":"d",
            "BulkSubscribe":{"ENABLED":true},"Routes":{"Rules":[{"MATCH":"true","Path":"/y"}]},
            "Metadata":{"rawPayload":"true"},"somethingNew":{"a":1},"routeS":null}]"#;
        let (specs, skipped) = programmatic(body).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        let s = &specs[0];
        assert_eq!((s.pubsubname.as_str(), s.topic.as_str()), ("p", "t"));
        assert_eq!(paths(s), [("true", "/y"), ("", "x")], "paths as written");
        assert_eq!(s.dead_letter_topic.as_deref(), Some("d"));
        assert!(s.bulk.enabled);
        assert_eq!(
            s.metadata["rawPayload"], "true",
            "metadata keys kept as written"
        );
        // An exact name wins over another spelling of it.
        let (specs, _) =
            programmatic(br#"[{"PubsubName":"other","pubsubname":"p","topic":"t","route":"/r"}]"#)
                .unwrap();
        assert_eq!(specs[0].pubsubname, "p");
    }

    #[test]
    fn a_bad_item_is_skipped_with_its_reason_and_the_rest_kept() {
        let body = br#"[{"pubsubname":"p","topic":"good","route":"/a"},
            {"pubsubname":"p","topic":"typed","route":"/b","metadata":{"n":5}},
            {"topic":"orphan","route":"/c"},
            {"pubsubname":"p","topic":"nowhere"},
            "not an object",
            {"pubsubname":"p","topic":"nulls","route":"/d","metadata":{"k":null},"routes":null,"bulkSubscribe":null}]"#;
        let (specs, skipped) = programmatic(body).unwrap();
        let topics: Vec<&str> = specs.iter().map(|s| s.topic.as_str()).collect();
        assert_eq!(topics, ["good", "nulls"]);
        assert_eq!(
            specs[1].metadata["k"], "",
            "Go decodes a null map value as empty"
        );
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        assert!(
            skipped[0].starts_with("item 1 (p/typed): "),
            "{}",
            skipped[0]
        );
        assert!(skipped[1].contains("no pubsubname"), "{}", skipped[1]);
        assert!(skipped[2].contains("no route"), "{}", skipped[2]);
        assert!(
            skipped[3].contains("item 4 (?/?): not a JSON object"),
            "{}",
            skipped[3]
        );
        assert!(
            programmatic(b"{\"pubsubname\":\"p\"}").is_err(),
            "not a list"
        );
    }
}
