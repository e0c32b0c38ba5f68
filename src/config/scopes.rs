//! Dapr's topic scoping (reference section 6): `publishingScopes`,
//! `subscriptionScopes`, `allowedTopics`, `protectedTopics`.

use std::collections::BTreeMap;

/// Parsed scoping metadata of one pub/sub component.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scoping {
    publishing: BTreeMap<String, Vec<String>>,
    subscription: BTreeMap<String, Vec<String>>,
    allowed: Vec<String>,
    protected: Vec<String>,
}

impl Scoping {
    /// Reads the scoping keys (case-insensitive, whitespace removed, as Dapr).
    pub fn from_metadata(md: &BTreeMap<String, String>) -> Self {
        let get = |k: &str| {
            md.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.chars().filter(|c| !c.is_whitespace()).collect::<String>())
        };
        Self {
            publishing: get("publishingScopes")
                .map(|s| app_map(&s))
                .unwrap_or_default(),
            subscription: get("subscriptionScopes")
                .map(|s| app_map(&s))
                .unwrap_or_default(),
            allowed: get("allowedTopics").map(|s| list(&s)).unwrap_or_default(),
            protected: get("protectedTopics").map(|s| list(&s)).unwrap_or_default(),
        }
    }

    /// May `app_id` publish to `topic`?
    pub fn may_publish(&self, app_id: &str, topic: &str) -> bool {
        self.allowed_for(&self.publishing, app_id, topic)
    }

    /// May `app_id` subscribe to `topic`?
    pub fn may_subscribe(&self, app_id: &str, topic: &str) -> bool {
        self.allowed_for(&self.subscription, app_id, topic)
    }

    fn allowed_for(
        &self,
        scopes: &BTreeMap<String, Vec<String>>,
        app_id: &str,
        topic: &str,
    ) -> bool {
        let has = |v: &[String]| v.iter().any(|t| t == topic);
        if !self.allowed.is_empty() && !has(&self.allowed) {
            return false;
        }
        let app = scopes.get(app_id);
        if has(&self.protected) {
            return app.is_some_and(|s| has(s));
        }
        app.is_none_or(|s| has(s))
    }
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `"app1=t1,t2;app2=;app3=t3"`; `app2=` yields `[""]`, which allows nothing.
fn app_map(s: &str) -> BTreeMap<String, Vec<String>> {
    s.split(';')
        .filter_map(|part| {
            let (app, topics) = part.split_once('=')?;
            Some((
                app.to_owned(),
                topics.split(',').map(str::to_owned).collect(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoping(pairs: &[(&str, &str)]) -> Scoping {
        Scoping::from_metadata(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn dapr_scoping_rules() {
        let s = scoping(&[
            ("publishingScopes", "app1=t1; app2="),
            ("protectedTopics", "secret"),
        ]);
        assert!(s.may_publish("app1", "t1"));
        assert!(!s.may_publish("app1", "t2"));
        assert!(!s.may_publish("app2", "t1"), "app2= allows nothing");
        assert!(
            s.may_publish("other", "t9"),
            "unlisted apps may publish anywhere"
        );
        assert!(
            !s.may_publish("other", "secret"),
            "protected needs an explicit grant"
        );
        let s = scoping(&[("allowedTopics", "a,b")]);
        assert!(s.may_subscribe("x", "a"));
        assert!(!s.may_subscribe("x", "c"));
    }
}
