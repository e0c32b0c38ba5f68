//! Component metadata values: literal, `envRef`, `secretKeyRef`, and the
//! templates `{appID}`, `{uuid}`, `{podName}`, `{namespace}`.

use serde_yaml::{Mapping, Value};

use super::options::LoadOptions;
use crate::report::doc::{scalar_text, DocCtx};

/// Resolves one `spec.metadata[i]` entry to its text, recording problems.
pub fn resolve(
    ctx: &mut DocCtx<'_>,
    entry: &Mapping,
    path: &str,
    opts: &LoadOptions,
) -> Option<String> {
    ctx.unknown_keys(entry, path, &["name", "value", "secretKeyRef", "envRef"]);
    let raw = if let Some(v) = entry.get("value") {
        match v {
            Value::Null => String::new(),
            other => match scalar_text(other) {
                Some(s) => s,
                None => {
                    ctx.problem(
                        format!("{path}.value"),
                        "must be a string, number or boolean",
                    );
                    return None;
                }
            },
        }
    } else if let Some(var) = ctx.string(entry, path, "envRef") {
        match std::env::var(&var) {
            Ok(v) => v,
            Err(_) => {
                ctx.problem(
                    format!("{path}.envRef"),
                    format!("environment variable {var} is not set"),
                );
                return None;
            }
        }
    } else if let Some(r) = ctx.mapping(entry, path, "secretKeyRef") {
        let p = format!("{path}.secretKeyRef");
        let name = ctx.required_string(r, &p, "name")?;
        let key = ctx.required_string(r, &p, "key")?;
        return secret(ctx, &p, &name, &key, opts);
    } else {
        ctx.problem(path, "needs one of value, envRef or secretKeyRef");
        return None;
    };
    template(ctx, &format!("{path}.value"), &raw, opts)
}

/// A secret from env var `<NAME>_<KEY>` (uppercased, other characters as `_`),
/// else from `<secrets-path>/<name>/<key>`.
fn secret(
    ctx: &mut DocCtx<'_>,
    path: &str,
    name: &str,
    key: &str,
    opts: &LoadOptions,
) -> Option<String> {
    let var: String = format!("{name}_{key}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = std::env::var(&var) {
        return Some(v);
    }
    if let Some(dir) = &opts.secrets_path {
        if let Ok(v) = std::fs::read_to_string(dir.join(name).join(key)) {
            return Some(v.trim_end_matches('\n').to_owned());
        }
    }
    ctx.problem(
        path,
        format!("secret {name}/{key} not found: set env var {var} or mount it at --secrets-path/{name}/{key}"),
    );
    None
}

fn template(ctx: &mut DocCtx<'_>, path: &str, raw: &str, opts: &LoadOptions) -> Option<String> {
    let mut out = raw.replace("{appID}", &opts.app_id);
    while out.contains("{uuid}") {
        out = out.replacen("{uuid}", &uuid::Uuid::new_v4().to_string(), 1);
    }
    if out.contains("{podName}") {
        match &opts.pod_name {
            Some(p) => out = out.replace("{podName}", p),
            None => {
                ctx.problem(path, "uses {podName} but POD_NAME is not set");
                return None;
            }
        }
    }
    if out.contains("{namespace}") {
        let ns = opts.template_namespace();
        out = out.replace("{namespace}", &format!("{ns}.{}", opts.app_id));
    }
    Some(out)
}
