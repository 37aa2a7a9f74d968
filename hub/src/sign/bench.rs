//! `kmm-hub sign bench`: signs the same modules with this library and with the kernel's
//! `sign-file`, in one run, and prints the time ratio.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::keys::Signer;
use super::module::{HashAlgo, sign_module_file};

/// Debian's `sign-file` (package `linux-kbuild-6.1`).
pub const DEFAULT_SIGN_FILE: &str = "/usr/lib/linux-kbuild-6.1/scripts/sign-file";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool}: {reason}")]
    Tool { tool: String, reason: String },
    #[error(transparent)]
    Sign(#[from] super::SignError),
    #[error("no modules to benchmark: {0}")]
    NoModules(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a module-like file of `size` bytes: a valid ELF64 relocatable header (x86-64, no
/// sections) followed by pseudo-random filler, as a stand-in for a very large driver.
pub fn write_large_module(path: &Path, size: usize) -> std::io::Result<()> {
    let mut header = [0u8; 64];
    header[..4].copy_from_slice(b"\x7fELF");
    header[4] = 2; // ELFCLASS64
    header[5] = 1; // little endian
    header[6] = 1; // EV_CURRENT
    header[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
    header[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    header[20..24].copy_from_slice(&1u32.to_le_bytes());
    header[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    header[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    f.write_all(&header)?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut chunk = vec![0u8; 1 << 16];
    let mut left = size.saturating_sub(header.len());
    while left > 0 {
        for c in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n])?;
        left -= n;
    }
    f.flush()
}

/// Generates a throwaway RSA key and certificate with `openssl`.
pub fn generate_rsa_key(dir: &Path, bits: u32) -> Result<(PathBuf, PathBuf), BenchError> {
    let key = dir.join("bench-key.pem");
    let cert = dir.join("bench-cert.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=kmm-hub bench",
        ])
        .arg("-newkey")
        .arg(format!("rsa:{bits}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|e| BenchError::Tool {
            tool: "openssl".into(),
            reason: format!("cannot run it ({e}); apt-get install -y openssl"),
        })?;
    if !out.status.success() {
        return Err(BenchError::Tool {
            tool: "openssl req".into(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok((key, cert))
}

/// One module's timings.
#[derive(Debug, Clone)]
pub struct BenchRow {
    pub name: String,
    pub size: u64,
    pub ours: Duration,
    pub sign_file: Duration,
    /// Our output equals sign-file's byte for byte.
    pub identical: bool,
}

/// Inputs of a benchmark run.
#[derive(Debug)]
pub struct BenchConfig<'a> {
    pub sign_file: &'a Path,
    pub key: &'a Path,
    pub cert: &'a Path,
    pub hash: HashAlgo,
    pub modules: &'a [PathBuf],
    pub rounds: u32,
    pub work_dir: &'a Path,
}

/// Signs every module `rounds` times with each tool (alternating, after one untimed warm-up
/// round) and returns the summed timings per module. Both tools read the module from disk and
/// write a signed copy; sign-file is run as a process per module, as build systems do.
pub fn run_bench(cfg: &BenchConfig<'_>) -> Result<Vec<BenchRow>, BenchError> {
    if cfg.modules.is_empty() {
        return Err(BenchError::NoModules("give --modules DIR or module files".into()));
    }
    let signer = Signer::from_files(cfg.key, cfg.cert)?;
    let mut rows = Vec::new();
    for (i, m) in cfg.modules.iter().enumerate() {
        let size = std::fs::metadata(m).map_err(io(m))?.len();
        let ours_out = cfg.work_dir.join(format!("{i}.ours.ko"));
        let theirs_out = cfg.work_dir.join(format!("{i}.sign-file.ko"));
        let mut ours = Duration::ZERO;
        let mut theirs = Duration::ZERO;
        for round in 0..=cfg.rounds {
            let t = Instant::now();
            sign_module_file(m, Some(&ours_out), &signer, cfg.hash)?;
            let d_ours = t.elapsed();
            let t = Instant::now();
            let out = Command::new(cfg.sign_file)
                .arg(cfg.hash.name())
                .arg(cfg.key)
                .arg(cfg.cert)
                .arg(m)
                .arg(&theirs_out)
                .output()
                .map_err(|e| BenchError::Tool {
                    tool: cfg.sign_file.display().to_string(),
                    reason: format!("cannot run it ({e}); apt-get install -y linux-kbuild-6.1"),
                })?;
            let d_theirs = t.elapsed();
            if !out.status.success() {
                return Err(BenchError::Tool {
                    tool: cfg.sign_file.display().to_string(),
                    reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            if round > 0 {
                ours += d_ours;
                theirs += d_theirs;
            }
        }
        let identical =
            std::fs::read(&ours_out).map_err(io(&ours_out))? == std::fs::read(&theirs_out).map_err(io(&theirs_out))?;
        let _ = std::fs::remove_file(&ours_out);
        let _ = std::fs::remove_file(&theirs_out);
        rows.push(BenchRow {
            name: m
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            size,
            ours,
            sign_file: theirs,
            identical,
        });
    }
    Ok(rows)
}

/// The report printed by `kmm-hub sign bench`.
pub fn format_report(rows: &[BenchRow], rounds: u32, hash: HashAlgo, key: &str) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "kmm-hub sign bench: {key}, {hash}, {rounds} timed round(s) per module\n"
    ));
    s.push_str(&format!(
        "{:<28} {:>12} {:>12} {:>14} {:>8} {:>10}\n",
        "module", "bytes", "ours ms", "sign-file ms", "ratio", "identical"
    ));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(rounds.max(1));
    let (mut to, mut tt) = (Duration::ZERO, Duration::ZERO);
    for r in rows {
        to += r.ours;
        tt += r.sign_file;
        s.push_str(&format!(
            "{:<28} {:>12} {:>12.2} {:>14.2} {:>8.3} {:>10}\n",
            r.name,
            r.size,
            ms(r.ours),
            ms(r.sign_file),
            r.ours.as_secs_f64() / r.sign_file.as_secs_f64(),
            if r.identical { "yes" } else { "no" }
        ));
    }
    s.push_str(&format!(
        "{:<28} {:>12} {:>12.2} {:>14.2} {:>8.3}\n",
        "total",
        rows.iter().map(|r| r.size).sum::<u64>(),
        ms(to),
        ms(tt),
        to.as_secs_f64() / tt.as_secs_f64()
    ));
    s.push_str(&format!(
        "ratio ours/sign-file = {:.3}\n",
        to.as_secs_f64() / tt.as_secs_f64()
    ));
    s
}
