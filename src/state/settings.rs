//! Process settings: `perch run`'s flags with their env fallbacks, as plain
//! data (see `cli`).

use std::time::Duration;

/// Process settings (flags with env fallbacks; see `cli`). Its `Debug`
/// never shows the tokens.
#[derive(Clone)]
pub struct Settings {
    /// `--app-id`.
    pub app_id: String,
    /// `--app-port`; without it there is no app channel and no subscriptions.
    pub app_port: Option<u16>,
    /// `--app-channel-address`.
    pub app_channel_address: String,
    /// `--app-protocol`: how the app is called.
    pub app_protocol: AppProtocol,
    /// `--app-max-concurrency`; `None` is unlimited.
    pub app_max_concurrency: Option<usize>,
    /// `DAPR_API_TOKEN`.
    pub api_token: Option<String>,
    /// `APP_API_TOKEN`, sent to the app as `dapr-api-token`.
    pub app_api_token: Option<String>,
    /// `--max-body-size` in bytes.
    pub max_body_size: usize,
    /// `--enable-api-logging`: each API call logged at INFO.
    pub api_logging: bool,
    /// `--dapr-graceful-shutdown-seconds`.
    pub graceful_shutdown: Duration,
    /// `--enable-app-health-check` and its settings; `None` when off.
    pub app_health: Option<AppHealthCheck>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |t: &Option<String>| t.as_ref().map(|_| "***");
        f.debug_struct("Settings")
            .field("app_id", &self.app_id)
            .field("app_port", &self.app_port)
            .field("app_channel_address", &self.app_channel_address)
            .field("app_protocol", &self.app_protocol)
            .field("app_max_concurrency", &self.app_max_concurrency)
            .field("api_token", &hidden(&self.api_token))
            .field("app_api_token", &hidden(&self.app_api_token))
            .field("max_body_size", &self.max_body_size)
            .field("api_logging", &self.api_logging)
            .field("graceful_shutdown", &self.graceful_shutdown)
            .field("app_health", &self.app_health)
            .finish()
    }
}

/// How the app is called (`--app-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppProtocol {
    /// HTTP/1.1: `POST` per event, `GET /dapr/subscribe`.
    #[default]
    Http,
    /// gRPC (h2c): Dapr's `AppCallback` service.
    Grpc,
}

/// How the app's health is probed (`--app-health-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHealthCheck {
    /// Path probed with GET.
    pub path: String,
    /// Time between probes.
    pub interval: Duration,
    /// Time a probe may take.
    pub timeout: Duration,
    /// Consecutive failures that make the app unhealthy.
    pub threshold: u32,
}
