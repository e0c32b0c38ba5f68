//! `perch dlq`: what sits in a dead-letter topic, and replaying it.
//!
//! # Design
//! - It reads the same resources as `perch run` (`--resources-path`,
//!   `--app-id`, `--secrets-path`) and opens the component's broker
//!   through [`crate::broker::Broker::dead_letters`]: nothing is consumed
//!   by reading. Kafka reads from a replay group's committed offsets
//!   (`--group`, default `perch-dlq`); RabbitMQ from the queue
//!   `{consumerID}-{topic}` Perch declared for the dead letters; Redis
//!   the entries of the dead-letter stream the app's group has not
//!   finished, read as the group's consumer `perch-dlq`.
//! - `list` shows the count, the oldest and newest, and per message the
//!   CloudEvent's id, type and source, the topic it was dead-lettered from,
//!   the reason and attempt count Perch recorded, and its size.
//! - `replay` publishes the selected messages back to the topic each came
//!   from (`perch-dead-letter-from`, or `--to`), bytes and content type
//!   unchanged (the CloudEvent keeps its id, so an idempotency store,
//!   which marked it dead, lets it reach the app again), and removes each
//!   from the dead-letter topic only once the broker confirmed the
//!   republish. On Kafka a removal moves the replay group's offset only
//!   over a run of removed messages: a message left behind keeps the ones
//!   after it listed (and, replayed again, suppressed as duplicates by an
//!   idempotency store).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::broker::{BrokerError, DeadLetters, Message, Peeked, Spec};
use crate::config::{self, LoadOptions, PubsubComponent};
use crate::message::{DEAD_LETTER_ATTEMPTS, DEAD_LETTER_FROM, DEAD_LETTER_REASON};

/// `perch dlq` and its subcommands.
#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Shows what sits in a dead-letter topic, without consuming it.
    List(ListArgs),
    /// Publishes dead letters back to the topic they came from.
    Replay(ReplayArgs),
}

/// What names the dead-letter topic.
#[derive(Debug, Args)]
struct Target {
    /// Folder of Component YAML, as for `perch run` (repeatable).
    #[arg(
        long,
        visible_alias = "components-path",
        env = "PERCH_RESOURCES_PATH",
        value_delimiter = ',',
        required = true
    )]
    resources_path: Vec<PathBuf>,
    /// The app id (`{appID}` templates; RabbitMQ's default consumerID).
    #[arg(long, env = "PERCH_APP_ID", default_value = "")]
    app_id: String,
    /// Folder of mounted secrets for `secretKeyRef`.
    #[arg(long, env = "PERCH_SECRETS_PATH")]
    secrets_path: Option<PathBuf>,
    /// The pub/sub component.
    #[arg(long, default_value = "pubsub")]
    pubsub: String,
    /// The dead-letter topic (`orders.dlq`, or the subscription's
    /// `deadLetterTopic`).
    #[arg(long)]
    topic: String,
    /// Kafka: the consumer group that records what was replayed.
    #[arg(long, default_value = "perch-dlq")]
    group: String,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    target: Target,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// List at most this many messages (all are counted).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    target: Target,
    /// Only these CloudEvent ids (repeatable).
    #[arg(long = "id")]
    ids: Vec<String>,
    /// Only events of this CloudEvent type.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only events older than this (a Go duration: `1h`, `30m`), by their
    /// CloudEvent `time`, else the broker's timestamp.
    #[arg(long)]
    older_than: Option<String>,
    /// Replay at most this many.
    #[arg(long)]
    limit: Option<usize>,
    /// Say what would be replayed, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Publish to this topic instead of each message's original one.
    #[arg(long)]
    to: Option<String>,
}

/// One dead letter as listed.
struct Seen {
    id: String,
    r#type: String,
    source: String,
    time: Option<chrono::DateTime<chrono::Utc>>,
    from: Option<String>,
    reason: String,
    attempts: String,
    size: usize,
}

fn seen(p: &Peeked) -> Seen {
    let ce: Value = serde_json::from_slice(&p.data).unwrap_or(Value::Null);
    let text = |k: &str| ce.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let time = ce
        .get("time")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|| {
            p.timestamp_ms
                .and_then(chrono::DateTime::from_timestamp_millis)
        });
    Seen {
        id: text("id"),
        r#type: text("type"),
        source: text("source"),
        time,
        from: p.metadata.get(DEAD_LETTER_FROM).cloned(),
        reason: p
            .metadata
            .get(DEAD_LETTER_REASON)
            .cloned()
            .unwrap_or_default(),
        attempts: p
            .metadata
            .get(DEAD_LETTER_ATTEMPTS)
            .cloned()
            .unwrap_or_default(),
        size: p.data.len(),
    }
}

/// Runs `perch dlq`.
pub async fn run(a: DlqArgs) -> ExitCode {
    let r = match a.command {
        DlqCommand::List(l) => list(l).await,
        DlqCommand::Replay(r) => replay(r).await,
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("perch dlq: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The component and its broker, and the dead letters opened.
async fn open(
    t: &Target,
) -> Result<
    (
        PubsubComponent,
        std::sync::Arc<dyn crate::broker::Broker>,
        Box<dyn DeadLetters>,
    ),
    String,
> {
    let opts = LoadOptions::from_env(&t.app_id, t.secrets_path.clone());
    let resources = config::load(&t.resources_path, &opts).map_err(|report| report.to_string())?;
    let Some(c) = resources
        .pubsubs
        .iter()
        .find(|c| c.name == t.pubsub)
        .cloned()
    else {
        let names: Vec<&str> = resources.pubsubs.iter().map(|c| c.name.as_str()).collect();
        return Err(format!(
            "no pub/sub component named {:?} in the resources (there: {})",
            t.pubsub,
            names.join(", ")
        ));
    };
    let broker =
        crate::broker::build(&c.name, &c.kind).map_err(|e| format!("component {}: {e}", c.name))?;
    let group = match &c.kind {
        Spec::Kafka(_) => t.group.clone(),
        // The queue Perch declares for the dead letters: `{consumerID}-{topic}`.
        _ => c.consumer_group(&t.app_id),
    };
    let topic = c.broker_topic(&t.topic);
    let dl = broker
        .dead_letters(&topic, &group)
        .await
        .map_err(|e| match e {
            BrokerError::Unavailable(e) => {
                format!("{} ({}) cannot be reached: {e}", c.name, c.type_name)
            }
            BrokerError::Rejected(e) => format!("{} ({}): {e}", c.name, c.type_name),
        })?;
    Ok((c, broker, dl))
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

async fn list(a: ListArgs) -> Result<(), String> {
    let (c, _broker, mut dl) = open(&a.target).await?;
    let mut all = vec![];
    let mut count = 0usize;
    let (mut oldest, mut newest) = (None, None);
    while let Some(p) = dl.next().await.map_err(|e| e.to_string())? {
        count += 1;
        let s = seen(&p);
        if let Some(t) = s.time {
            oldest = Some(oldest.map_or(t, |o: chrono::DateTime<chrono::Utc>| o.min(t)));
            newest = Some(newest.map_or(t, |n: chrono::DateTime<chrono::Utc>| n.max(t)));
        }
        if all.len() < a.limit {
            all.push(s);
        }
    }
    dl.close().await;
    if a.json {
        let messages: Vec<Value> = all
            .iter()
            .map(|s| {
                json!({"id": s.id, "type": s.r#type, "source": s.source, "time": s.time.map(|t| when(Some(t))),
                       "from": s.from, "reason": s.reason, "attempts": s.attempts.parse::<u64>().ok(), "size": s.size})
            })
            .collect();
        let out = json!({"pubsub": c.name, "topic": a.target.topic, "count": count,
                         "oldest": oldest.map(|t| when(Some(t))), "newest": newest.map(|t| when(Some(t))),
                         "messages": messages});
        println!("{out}");
        return Ok(());
    }
    println!(
        "{} on {} ({}): {count} message(s), oldest {}, newest {}",
        a.target.topic,
        c.name,
        c.type_name,
        when(oldest),
        when(newest)
    );
    if count == 0 {
        return Ok(());
    }
    println!(
        "{:<38} {:<24} {:<20} {:<20} {:>8} {:>8}  REASON",
        "ID", "TYPE", "SOURCE", "FROM", "ATTEMPTS", "BYTES"
    );
    for s in &all {
        println!(
            "{:<38} {:<24} {:<20} {:<20} {:>8} {:>8}  {}",
            s.id,
            s.r#type,
            s.source,
            s.from.as_deref().unwrap_or("-"),
            if s.attempts.is_empty() {
                "-"
            } else {
                &s.attempts
            },
            s.size,
            s.reason
        );
    }
    if all.len() < count {
        println!("... {} more (--limit)", count - all.len());
    }
    Ok(())
}

/// The republished message's metadata: the dead letter's, without what
/// Perch or the broker added on the way (`perch-dead-letter-*`, the Kafka
/// record's `__*`); the record key stays the partition key.
fn replay_metadata(md: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = md
        .iter()
        .filter(|(k, _)| !k.starts_with("__") && !k.starts_with("perch-dead-letter-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(key) = md.get("__key") {
        out.entry("partitionKey".into())
            .or_insert_with(|| key.clone());
    }
    out
}

async fn replay(a: ReplayArgs) -> Result<(), String> {
    let older = a
        .older_than
        .as_deref()
        .map(|d| crate::util::parse_go_duration(d).map_err(|e| format!("--older-than {d:?}: {e}")))
        .transpose()?;
    let (c, broker, mut dl) = open(&a.target).await?;
    let cutoff = older.map(|d| {
        chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero())
    });
    let (mut replayed, mut kept, mut no_origin) = (0usize, 0usize, 0usize);
    let started = std::time::Instant::now();
    let mut last_progress = started;
    let result = async {
        while let Some(p) = dl.next().await.map_err(|e| e.to_string())? {
            let s = seen(&p);
            let selected = (a.ids.is_empty() || a.ids.contains(&s.id))
                && a.event_type.as_ref().is_none_or(|t| *t == s.r#type)
                && cutoff.is_none_or(|cut| s.time.is_some_and(|t| t < cut))
                && a.limit.is_none_or(|l| replayed < l);
            let target = a.to.clone().or(s.from.clone());
            let (true, Some(to)) = (selected, target) else {
                if selected {
                    no_origin += 1;
                }
                kept += 1;
                continue;
            };
            if a.dry_run {
                println!("would replay {} ({}) to {to}", s.id, s.r#type);
                replayed += 1;
                continue;
            }
            let msg = Message {
                topic: c.broker_topic(&to),
                data: p.data.clone(),
                content_type: p.content_type.clone(),
                metadata: replay_metadata(&p.metadata),
            };
            broker
                .publish(msg)
                .await
                .map_err(|e| format!("republishing {} to {to} failed ({e}); it and what follows stay in {}", s.id, a.target.topic))?;
            dl.remove()
                .await
                .map_err(|e| format!("{} was republished to {to} but could not be removed from {} ({e}): it may be replayed again", s.id, a.target.topic))?;
            replayed += 1;
            if last_progress.elapsed() >= Duration::from_secs(2) {
                eprintln!("perch dlq: replayed {replayed} so far ({:.0}/s)", replayed as f64 / started.elapsed().as_secs_f64());
                last_progress = std::time::Instant::now();
            }
        }
        Ok::<(), String>(())
    }
    .await;
    dl.close().await;
    broker.close().await;
    result?;
    let verb = if a.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!("{verb} {replayed}, kept {kept} in {}", a.target.topic);
    if no_origin > 0 {
        println!("{no_origin} selected message(s) have no perch-dead-letter-from: give --to");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_drops_what_the_way_added_and_keeps_the_key() {
        let md: BTreeMap<String, String> = [
            ("__key", "k1"),
            ("__partition", "0"),
            ("__offset", "7"),
            (DEAD_LETTER_FROM, "orders"),
            (DEAD_LETTER_REASON, "app answered DROP"),
            ("custom", "v"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let out = replay_metadata(&md);
        let keys: Vec<&str> = out.keys().map(String::as_str).collect();
        assert_eq!(keys, ["custom", "partitionKey"]);
        assert_eq!(out["partitionKey"], "k1");
    }
}
