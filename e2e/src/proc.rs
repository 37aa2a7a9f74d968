//! Child processes of a fleet: each in its own process group, its output in a
//! log file, all of them killed on teardown (explicit, on `Drop`, and by a
//! watchdog when the owning process dies without unwinding).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// One started process.
struct Entry {
    name: String,
    child: Child,
    log: PathBuf,
    /// Set once we have seen it exit (or once teardown began).
    exited: Option<String>,
}

/// Owns every process of one fleet.
pub struct Supervisor {
    dir: PathBuf,
    pgid_file: PathBuf,
    procs: Mutex<Vec<Entry>>,
    watchdog: Mutex<Option<Child>>,
    torn_down: Mutex<bool>,
}

/// How to start one process.
pub struct Spawn<'a> {
    pub name: &'a str,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<&'a Path>,
}

impl<'a> Spawn<'a> {
    pub fn new(name: &'a str, program: &'a Path) -> Self {
        Self {
            name,
            program,
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn cwd(mut self, d: &'a Path) -> Self {
        self.cwd = Some(d);
        self
    }
}

const WATCHDOG: &str = r#"
parent="$1"; list="$2"
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
if [ -f "$list" ]; then
  while read -r g; do kill -TERM "-$g" 2>/dev/null; done < "$list"
  sleep 2
  while read -r g; do kill -KILL "-$g" 2>/dev/null; done < "$list"
fi
"#;

impl Supervisor {
    /// `dir` receives `logs/` and the process-group list used by the watchdog.
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let pgid_file = dir.join("pgids");
        File::create(&pgid_file)?;
        // The watchdog outlives us only to clean up after an abrupt exit
        // (SIGKILL, abort, Ctrl-C of `cargo test`): it polls our pid.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("kmm-e2e-watchdog")
            .arg(std::process::id().to_string())
            .arg(&pgid_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the watchdog (sh)")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            pgid_file,
            procs: Mutex::new(Vec::new()),
            watchdog: Mutex::new(Some(watchdog)),
            torn_down: Mutex::new(false),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Start a process in its own process group; stdout and stderr go to
    /// `logs/<name>.log`.
    pub fn spawn(&self, s: Spawn<'_>) -> Result<PathBuf> {
        if *self.torn_down.lock().unwrap() {
            bail!("fleet is torn down; not starting {}", s.name);
        }
        let log = self.log_dir().join(format!("{}.log", s.name));
        let mut f = OpenOptions::new().create(true).append(true).open(&log)?;
        writeln!(f, "### {} {}", s.program.display(), shell_words(&s.args).join(" "))?;
        let f2 = f.try_clone()?;
        let mut cmd = Command::new(s.program);
        cmd.args(&s.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .process_group(0);
        for (k, v) in &s.env {
            cmd.env(k, v);
        }
        if let Some(d) = s.cwd {
            cmd.current_dir(d);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", s.name, s.program.display()))?;
        let mut pg = OpenOptions::new().append(true).open(&self.pgid_file)?;
        writeln!(pg, "{}", child.id())?;
        self.procs.lock().unwrap().push(Entry {
            name: s.name.to_string(),
            child,
            log: log.clone(),
            exited: None,
        });
        Ok(log)
    }

    /// Err if any process has exited on its own, with the tail of its log.
    pub fn check_alive(&self) -> Result<()> {
        let mut procs = self.procs.lock().unwrap();
        for e in procs.iter_mut() {
            if e.exited.is_some() {
                continue;
            }
            if let Some(st) = e.child.try_wait()? {
                let msg = format!("{st}");
                e.exited = Some(msg.clone());
                bail!(
                    "process {} exited ({msg}); log {}:\n{}",
                    e.name,
                    e.log.display(),
                    tail(&e.log, 40)
                );
            }
        }
        Ok(())
    }

    /// Stop one process by name (SIGTERM to its group, SIGKILL after `grace`).
    pub fn stop(&self, name: &str, grace: Duration) -> Result<()> {
        let mut procs = self.procs.lock().unwrap();
        let Some(e) = procs.iter_mut().rev().find(|e| e.name == name && e.exited.is_none()) else {
            bail!("no process named {name}");
        };
        e.exited = Some("stopped".into());
        stop_group(&mut e.child, grace);
        Ok(())
    }

    /// Kill one process by name at once (SIGKILL to its group), as a node failure or the OOM
    /// killer would: no graceful shutdown.
    pub fn kill(&self, name: &str) -> Result<()> {
        let mut procs = self.procs.lock().unwrap();
        let Some(e) = procs.iter_mut().rev().find(|e| e.name == name && e.exited.is_none()) else {
            bail!("no process named {name}");
        };
        e.exited = Some("killed".into());
        let _ = killpg(Pid::from_raw(e.child.id() as i32), Signal::SIGKILL);
        let _ = e.child.wait();
        Ok(())
    }

    /// (name, pid) of every process still running.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut procs = self.procs.lock().unwrap();
        procs
            .iter_mut()
            .filter_map(|e| match e.child.try_wait() {
                Ok(None) => Some((e.name.clone(), e.child.id())),
                _ => None,
            })
            .collect()
    }

    /// Sum of the resident set size (kB from /proc) of every running process.
    pub fn rss_kib(&self) -> Vec<(String, u64)> {
        self.pids()
            .into_iter()
            .map(|(n, pid)| {
                let kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find(|l| l.starts_with("VmRSS:"))
                            .and_then(|l| l.split_whitespace().nth(1))
                            .and_then(|v| v.parse().ok())
                    })
                    .unwrap_or(0);
                (n, kb)
            })
            .collect()
    }

    /// Kill every process (SIGTERM, then SIGKILL after a short grace) and wait
    /// for them. Idempotent.
    pub fn teardown(&self) {
        {
            let mut t = self.torn_down.lock().unwrap();
            if *t {
                return;
            }
            *t = true;
        }
        let mut procs = self.procs.lock().unwrap();
        for e in procs.iter_mut().rev() {
            let _ = killpg(Pid::from_raw(e.child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for e in procs.iter_mut().rev() {
            let left = deadline.saturating_duration_since(Instant::now());
            wait_or_kill(&mut e.child, left);
            // Anything the leader left behind in its group.
            let _ = killpg(Pid::from_raw(e.child.id() as i32), Signal::SIGKILL);
        }
        drop(procs);
        if let Some(mut w) = self.watchdog.lock().unwrap().take() {
            let _ = killpg(Pid::from_raw(w.id() as i32), Signal::SIGKILL);
            let _ = w.wait();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn stop_group(child: &mut Child, grace: Duration) {
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    wait_or_kill(child, grace);
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
}

fn wait_or_kill(child: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => break,
        }
    }
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// Last `n` lines of a file (at most 64 KiB read).
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::from("<no log>");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let s = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn shell_words(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| {
            if a.chars().all(|c| c.is_ascii_alphanumeric() || "-_=./:,@+".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect()
}
