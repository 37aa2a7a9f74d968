//! Process plumbing for the controller binaries: logs, signals, boolean environment switches.

use tokio_util::sync::CancellationToken;

/// Installs the global log subscriber: `RUST_LOG` if set, else `info` with kube-runtime's
/// per-object chatter at `warn`; JSON lines when `json`.
pub fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_runtime=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Parses a boolean switch as operators set them in environment variables (`1`, `true`, `yes`,
/// `0`, `false`, `no`, empty).
pub fn parse_bool_env(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" | "" => Ok(false),
        other => Err(format!("expected 1/0 or true/false, got {other:?}")),
    }
}

/// A token cancelled on SIGTERM or Ctrl-C, so controllers finish their reconciles and stop.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return ctrl_c.await.unwrap_or(()),
    };
    tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bool_switches() {
        for t in ["1", "true", "TRUE", "yes"] {
            assert_eq!(parse_bool_env(t), Ok(true), "{t}");
        }
        for f in ["0", "false", "No", ""] {
            assert_eq!(parse_bool_env(f), Ok(false), "{f}");
        }
        assert!(parse_bool_env("maybe").unwrap_err().contains("maybe"));
    }
}
