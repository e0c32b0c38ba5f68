//! `admission.k8s.io/v1` AdmissionReview in and out, written for the few
//! fields the webhook reads (kube-core's response type writes `patch` as
//! an array of numbers, not the base64 the API documents: kube-rs #1781).

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::patch::{patch_for, Decision, Settings};

#[derive(Deserialize)]
struct Review {
    request: Option<Request>,
}

#[derive(Deserialize)]
struct Request {
    uid: String,
    #[serde(default)]
    kind: Kind,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    object: Value,
}

#[derive(Deserialize, Default)]
struct Kind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

/// The AdmissionReview answering `body`, with what was decided for the
/// log; `Err` when the body is not an AdmissionReview with a request.
pub fn answer(body: &[u8], settings: &Settings) -> Result<(Value, String), String> {
    let review: Review = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an AdmissionReview: {e}"))?;
    let req = review.request.ok_or("the AdmissionReview has no request")?;
    let decision =
        if req.kind.group.is_empty() && req.kind.kind == "Pod" && req.operation == "CREATE" {
            patch_for(&req.object, &req.namespace, settings)
        } else {
            Decision::Allow {
                why: "not a pod creation",
                warnings: vec![],
            }
        };
    let mut response = json!({"uid": req.uid, "allowed": true});
    let what = match decision {
        Decision::Allow { why, warnings } => {
            if !warnings.is_empty() {
                response["warnings"] = json!(warnings);
            }
            format!("allowed unchanged: {why}")
        }
        Decision::Deny(message) => {
            response["allowed"] = json!(false);
            response["status"] = json!({"code": 400, "reason": "Invalid", "message": message});
            format!("denied: {message}")
        }
        Decision::Patch { ops, warnings } => {
            let patch = serde_json::to_vec(&ops).expect("JSON ops serialise");
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
            if !warnings.is_empty() {
                response["warnings"] = json!(warnings);
            }
            format!("patched ({} operations)", ops.len())
        }
    };
    Ok((
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
        what,
    ))
}
