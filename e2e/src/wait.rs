//! Bounded waiting: every loop has a deadline and says what it waited for.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

/// Poll `f` every `every` until it yields `Some`, `timeout` passes (error
/// naming `what` and the last error seen), or `alive` fails (a process the
/// wait depends on has died).
pub async fn poll<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut alive: impl FnMut() -> Result<()>,
    mut f: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        alive().map_err(|e| e.context(format!("while waiting for {what}")))?;
        let last_err = match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if start.elapsed() >= timeout {
            return Err(match last_err {
                Some(e) => anyhow!("timed out after {timeout:?} waiting for {what}; last error: {e:#}"),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(every).await;
    }
}
