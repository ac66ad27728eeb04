//! Logging setup: structured, lowercase messages on stderr; `RUST_LOG` overrides.

use tracing_subscriber::EnvFilter;

/// Default filter: slot2lake at info, libraries at warn.
pub const DEFAULT_FILTER: &str = "warn,slot2lake=info,pg_walstream=error";

/// Installs the global subscriber (once).
pub fn init(verbose: bool) {
    let default = if verbose {
        "warn,slot2lake=debug,pg_walstream=warn"
    } else {
        DEFAULT_FILTER
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
