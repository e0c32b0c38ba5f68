//! Reads every `*.yaml`/`*.yml` in the resources paths, splits multi-document
//! files, dispatches each document on `apiVersion` + `kind`, applies scopes,
//! and cross-checks names. Every problem is collected before failing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

use super::component::{self, PubsubComponent};
use super::options::LoadOptions;
use super::subscription::{self, SubscriptionSpec};
use crate::report::doc::{scalar_text, DocCtx};
use crate::report::{ConfigReport, Problem};

/// Everything loaded from the resources paths.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// Pub/sub components in load order.
    pub pubsubs: Vec<PubsubComponent>,
    /// Declarative subscriptions in load order.
    pub subscriptions: Vec<SubscriptionSpec>,
    /// `Resiliency` documents.
    pub resiliency: Vec<super::resiliency::Resiliency>,
    /// Store components (`store.*`).
    pub stores: Vec<crate::store::config::StoreComponent>,
    /// What was accepted with a warning (Dapr keys Perch ignores): logged
    /// once at start-up.
    pub warnings: Vec<Problem>,
}

/// Loads and validates every resource under `paths`.
pub fn load(paths: &[PathBuf], opts: &LoadOptions) -> Result<Resources, ConfigReport> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut res = Resources::default();
    let mut pending_subs: Vec<(PathBuf, usize, SubscriptionSpec)> = Vec::new();
    let mut store_refs: Vec<(PathBuf, usize, &str, String)> = Vec::new();
    let mut names: BTreeSet<(String, String)> = BTreeSet::new();
    // Components declared, loaded or not: a subscription to one that has
    // problems of its own is not reported again.
    let mut declared_components: BTreeSet<String> = BTreeSet::new();
    for file in yaml_files(paths, &mut problems) {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                problems.push(file_problem(&file, format!("cannot read file: {e}")));
                continue;
            }
        };
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let doc_no = i + 1;
            let value = match Value::deserialize(de) {
                Ok(Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    problems.push(Problem {
                        file: file.clone(),
                        doc: Some(doc_no),
                        field: String::new(),
                        message: format!("not valid YAML: {e}"),
                    });
                    break;
                }
            };
            let mut ctx = DocCtx {
                file: &file,
                doc: doc_no,
                problems: &mut problems,
                warnings: &mut warnings,
            };
            let Some(head) = Header::read(&mut ctx, &value) else {
                continue;
            };
            if let Some(ns) = &opts.namespace {
                if head.namespace.as_deref().is_some_and(|n| n != ns) {
                    continue;
                }
            }
            if !head.scopes.is_empty() && !head.scopes.contains(&opts.app_id) {
                continue;
            }
            if !names.insert((head.kind.clone(), head.name.clone())) {
                ctx.problem(
                    "metadata.name",
                    format!(
                        "duplicate {} name {:?}; names must be unique",
                        head.kind, head.name
                    ),
                );
                continue;
            }
            let map = value.as_mapping().expect("checked by Header::read");
            match (head.api_version.as_str(), head.kind.as_str()) {
                ("dapr.io/v1alpha1", "Component") => {
                    declared_components.insert(head.name.clone());
                    match component::read(&mut ctx, &head.name, map, opts) {
                        Some(component::Loaded::Pubsub(c)) => {
                            for (key, store) in [
                                ("idempotencyStore", &c.idempotency_store),
                                ("outboxStore", &c.outbox_store),
                            ] {
                                if let Some(store) = store {
                                    store_refs.push((file.clone(), doc_no, key, store.clone()));
                                }
                            }
                            res.pubsubs.push(*c)
                        }
                        Some(component::Loaded::Store(s)) => res.stores.push(s),
                        None => {}
                    }
                }
                ("dapr.io/v1alpha1" | "dapr.io/v2alpha1", "Subscription") => {
                    let v2 = head.api_version.ends_with("v2alpha1");
                    if let Some(s) = subscription::read(&mut ctx, &head.name, map, v2) {
                        pending_subs.push((file.clone(), doc_no, s));
                    }
                }
                ("dapr.io/v1alpha1", "Resiliency") => {
                    if let Some(r) = super::resiliency::read(&mut ctx, &head.name, map) {
                        res.resiliency.push(r);
                    }
                }
                ("dapr.io/v1alpha1", "Configuration" | "HTTPEndpoint") => {
                    tracing::debug!(file = %file.display(), kind = %head.kind, "skipping resource Perch does not use");
                }
                (api, "Component" | "Subscription" | "Resiliency") => ctx.problem(
                    "apiVersion",
                    format!("unsupported apiVersion {api:?} for kind {}", head.kind),
                ),
                (_, kind) => ctx.problem(
                    "kind",
                    format!(
                        "unknown kind {kind:?}; Perch reads Component, Subscription and Resiliency"
                    ),
                ),
            }
        }
    }
    for (file, doc, sub) in pending_subs {
        if declared_components.contains(&sub.pubsubname)
            && !res.pubsubs.iter().any(|p| p.name == sub.pubsubname)
        {
            continue; // its component has problems, already reported
        }
        if !res.pubsubs.iter().any(|p| p.name == sub.pubsubname) {
            let known: Vec<&str> = res.pubsubs.iter().map(|p| p.name.as_str()).collect();
            problems.push(Problem {
                file,
                doc: Some(doc),
                field: "spec.pubsubname".into(),
                message: format!(
                    "no pubsub component named {:?} is loaded (loaded: {})",
                    sub.pubsubname,
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            });
            continue;
        }
        res.subscriptions.push(sub);
    }
    for (file, doc, key, store) in store_refs {
        if !res.stores.iter().any(|s| s.name == store) {
            let known: Vec<&str> = res.stores.iter().map(|s| s.name.as_str()).collect();
            problems.push(Problem {
                file,
                doc: Some(doc),
                field: format!("spec.metadata.{key}"),
                message: format!(
                    "no store component named {store:?} is loaded (loaded: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            });
        }
    }
    // Stable: document order within a file is kept.
    problems.sort_by(|a, b| (&a.file, a.doc).cmp(&(&b.file, b.doc)));
    if problems.is_empty() {
        res.warnings = warnings;
        Ok(res)
    } else {
        Err(ConfigReport { problems })
    }
}

struct Header {
    api_version: String,
    kind: String,
    name: String,
    namespace: Option<String>,
    scopes: Vec<String>,
}

impl Header {
    fn read(ctx: &mut DocCtx<'_>, v: &Value) -> Option<Header> {
        let Some(map) = v.as_mapping() else {
            ctx.problem("", "a resource must be a YAML mapping");
            return None;
        };
        let api_version = ctx.required_string(map, "", "apiVersion");
        let kind = ctx.required_string(map, "", "kind");
        let meta = ctx.mapping(map, "", "metadata");
        let name = match meta {
            Some(m) => ctx.required_string(m, "metadata", "name"),
            None => {
                ctx.problem("metadata.name", "missing required field");
                None
            }
        };
        if let Some(n) = &name {
            if n.contains('/') || n == "." || n == ".." {
                ctx.problem("metadata.name", "must be a valid path segment (no '/')");
            }
        }
        let namespace = meta.and_then(|m| m.get("namespace")).and_then(scalar_text);
        let scopes = ctx.string_list(map, "", "scopes");
        Some(Header {
            api_version: api_version?,
            kind: kind?,
            name: name?,
            namespace,
            scopes,
        })
    }
}

fn yaml_files(paths: &[PathBuf], problems: &mut Vec<Problem>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in paths {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                problems.push(file_problem(
                    dir,
                    format!("cannot read resources path: {e}"),
                ));
                continue;
            }
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
            })
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

fn file_problem(file: &Path, message: String) -> Problem {
    Problem {
        file: file.to_path_buf(),
        doc: None,
        field: String::new(),
        message,
    }
}
