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

/// The value of the first series whose line starts with `name` on `127.0.0.1:<port>/metrics`.
pub async fn metric(port: u16, name: &str) -> Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    out.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .with_context(|| format!("{name} not in the metrics on port {port}"))
}
