//! Log set-up for `--log-level` and `--log-as-json` (daprd's flags).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is daprd's level name
/// (`debug`, `info`, `warn`, `error`, `fatal`); `RUST_LOG` overrides it.
pub fn init(level: &str, json: bool) {
    let level = match level {
        "fatal" => "error",
        other => other,
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("perch={level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests, demo) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
