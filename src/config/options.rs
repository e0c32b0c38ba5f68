//! What the loader needs to know about the process (app id, secrets,
//! namespace, pod name). A leaf: `load`, `component` and `value` all read
//! it, and it reads none of them.

use std::path::PathBuf;

/// What the loader needs to know about the process.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The app id: scopes and `{appID}` templates.
    pub app_id: String,
    /// Folder of mounted secrets (`<dir>/<name>/<key>`) for `secretKeyRef`.
    pub secrets_path: Option<PathBuf>,
    /// `NAMESPACE`: resources of another namespace are skipped, as in Dapr.
    pub namespace: Option<String>,
    /// `POD_NAME`, for `{podName}` templates.
    pub pod_name: Option<String>,
}

impl LoadOptions {
    /// The namespace `{namespace}` stands for: `NAMESPACE`, else
    /// `default` (daprd's `CurrentNamespace` outside Kubernetes).
    pub fn template_namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    /// Options for `app_id`, reading `NAMESPACE` and `POD_NAME` from the environment.
    pub fn from_env(app_id: &str, secrets_path: Option<PathBuf>) -> Self {
        Self {
            app_id: app_id.to_owned(),
            secrets_path,
            namespace: std::env::var("NAMESPACE").ok().filter(|s| !s.is_empty()),
            pod_name: std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()),
        }
    }
}
