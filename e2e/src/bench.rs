//! What the benchmarks share: finding the release binary beside the e2e binary, peak memory,
//! and reading a counter from a controller's plain-HTTP metrics.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};

/// `name` next to the running executable (`target/release/`), or how to build it.
pub fn release_binary(name: &str, package: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("no directory")?.join(name);
    ensure!(
        path.exists(),
        "{} not found: build it with `cargo build --release -p {package}`",
        path.display()
    );
    Ok(path)
}

/// Peak resident memory (VmHWM) of `pid` in KiB; 0 when unknown.
pub fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Every series of metric `name` on `127.0.0.1:<port>/metrics`: its labels (`{...}`, or empty)
/// and value.
pub async fn series(port: u16, name: &str) -> Result<Vec<(String, f64)>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let found: Vec<(String, f64)> = out
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            (labels.is_empty() || labels.starts_with('{')).then_some(())?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect();
    ensure!(!found.is_empty(), "{name} not in the metrics on port {port}");
    Ok(found)
}

/// The sum of every series of metric `name` on `127.0.0.1:<port>/metrics`.
pub async fn metric(port: u16, name: &str) -> Result<f64> {
    Ok(series(port, name).await?.iter().map(|(_, v)| v).sum())
}
