//! The app's answer as data: Dapr's reading of a single-message response
//! (reference 3.3), in one function with a table test.

/// What to do with a message after the app answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledge.
    Success,
    /// Try again later (the reason is logged).
    Retry(String),
    /// Do not try again: dead-letter if configured, else acknowledge.
    Drop(String),
}

impl Outcome {
    /// As a retry-loop attempt: success and drop end the loop, retry fails it.
    pub fn into_attempt(self, status: Option<u16>) -> super::retry::Attempt<Outcome> {
        match self {
            Outcome::Retry(reason) => super::retry::Attempt::Failed { status, reason },
            done => super::retry::Attempt::Done(done),
        }
    }
}

/// Classifies a response; `status` is `None` for a transport error.
pub fn classify(status: Option<u16>, body: &[u8]) -> Outcome {
    let Some(status) = status else {
        return Outcome::Retry("app unreachable".into());
    };
    if status == 404 {
        return Outcome::Drop("app answered 404".into());
    }
    if !(200..300).contains(&status) {
        return Outcome::Retry(format!("app answered status {status}"));
    }
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return Outcome::Success;
    };
    match obj.get("status").and_then(|v| v.as_str()) {
        None | Some("") | Some("SUCCESS") => Outcome::Success,
        Some("RETRY") => Outcome::Retry("app answered RETRY".into()),
        Some("DROP") => Outcome::Drop("app answered DROP".into()),
        Some(other) => Outcome::Retry(format!("app answered unknown status {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dapr_outcome_table() {
        use Outcome::*;
        let retry = |o: &Outcome| matches!(o, Retry(_));
        let drop = |o: &Outcome| matches!(o, Drop(_));
        assert!(retry(&classify(None, b"")));
        assert_eq!(classify(Some(200), b""), Success);
        assert_eq!(classify(Some(204), b"not json"), Success);
        assert_eq!(classify(Some(200), br#"{"status":"SUCCESS"}"#), Success);
        assert_eq!(classify(Some(200), br#"{"status":""}"#), Success);
        assert_eq!(classify(Some(200), br#"{"other":1}"#), Success);
        assert!(retry(&classify(Some(200), br#"{"status":"RETRY"}"#)));
        assert!(drop(&classify(Some(200), br#"{"status":"DROP"}"#)));
        assert!(
            retry(&classify(Some(200), br#"{"status":"success"}"#)),
            "case-sensitive"
        );
        assert!(drop(&classify(Some(404), b"")));
        assert!(retry(&classify(Some(500), br#"{"status":"SUCCESS"}"#)));
        assert!(retry(&classify(Some(429), b"")));
    }
}
