//! Signals: SIGHUP reloads the policy, SIGINT / SIGTERM stop the server.

use crate::policy::PolicyHandle;

/// Reloads the policy on every SIGHUP; connections and the old policy stay up
/// (a malformed file is refused and logged).
pub(super) async fn reload_on_hangup(policy: PolicyHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: the policy will not be reloaded");
                return;
            }
        };
        while hup.recv().await.is_some() {
            policy.reload_and_log();
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

pub(super) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
