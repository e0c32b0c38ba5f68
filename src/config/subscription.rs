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

/// One item of the app's `GET /dapr/subscribe` answer (JSON keys as Dapr's).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgrammaticSubscription {
    /// Pub/sub component.
    pub pubsubname: String,
    /// Topic.
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

impl ProgrammaticSubscription {
    /// Dapr's rule building: rules in order, then `routes.default` else
    /// `route`. `None` when no rule results (Dapr drops such an item).
    pub fn into_spec(self) -> Option<SubscriptionSpec> {
        let routes = self.routes.unwrap_or_default();
        let default = if routes.default.is_empty() {
            self.route
        } else {
            routes.default
        };
        let rules = build_rules(routes.rules, default);
        (!rules.is_empty()).then(|| SubscriptionSpec {
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

fn build_rules(mut rules: Vec<Route>, default: String) -> Vec<Route> {
    if !default.is_empty() {
        rules.push(Route {
            match_expr: String::new(),
            path: default,
        });
    }
    for r in &mut rules {
        if !r.path.starts_with('/') {
            r.path.insert(0, '/');
        }
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
