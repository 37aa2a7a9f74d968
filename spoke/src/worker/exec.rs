//! The thin, impure part: runs planned [`Step`]s on the node (or prints them).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::WorkerError;
use super::config::sysfs_name;
use super::firmware;
use super::plan::{ModprobeKind, Step, command_line};

/// Where the node's kernel interfaces are, as the worker sees them (tests point these at
/// temporary directories).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    /// `/sys/module`: which modules are loaded, and `firmware_class/parameters/path`.
    pub sys_module: PathBuf,
    /// `/proc/sys/kernel/osrelease`: the running kernel.
    pub kernel_release: PathBuf,
}

impl Default for NodePaths {
    fn default() -> Self {
        NodePaths {
            sys_module: "/sys/module".into(),
            kernel_release: "/proc/sys/kernel/osrelease".into(),
        }
    }
}

impl NodePaths {
    /// The `firmware_class.path` parameter file.
    pub fn firmware_class_path(&self) -> PathBuf {
        self.sys_module.join("firmware_class/parameters/path")
    }

    /// Whether the loaded `module` is out-of-tree (its taint flags hold `O`).
    pub fn out_of_tree(&self, module: &str) -> bool {
        std::fs::read_to_string(self.sys_module.join(sysfs_name(module)).join("taint")).is_ok_and(|t| t.contains('O'))
    }

    /// Whether `module` is loaded as a module, built into the kernel, or absent.
    pub fn module_state(&self, module: &str) -> ModuleState {
        let d = self.sys_module.join(sysfs_name(module));
        if d.join("initstate").exists() {
            ModuleState::Loaded
        } else if d.is_dir() {
            ModuleState::BuiltIn
        } else {
            ModuleState::Absent
        }
    }
}

/// What `/sys/module` says about a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleState {
    Loaded,
    BuiltIn,
    Absent,
}

/// How the executor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Do it.
    Run,
    /// Print every step and command line; run nothing.
    Print,
    /// Print every step; run only the modprobe steps, which the plan gave `--dry-run` (and
    /// `-S <kernel>`); no sysfs checks, no firmware changes.
    ModprobeDryRun,
}

/// modprobe failed, with its own message and what a person can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ModprobeError {
    #[error("{what}: cannot run {program:?}: {reason}")]
    Spawn {
        what: String,
        program: String,
        reason: String,
    },
    #[error("{what}: `{command}` failed ({status}): {message}{hint}")]
    Failed {
        what: String,
        command: String,
        status: String,
        message: String,
        hint: String,
    },
    #[error("in-tree module {module} is built into the kernel and cannot be removed, so it cannot be replaced")]
    BuiltIn { module: String },
}

/// A hint for a modprobe message, or "".
pub fn hint_for(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("required key not available") || m.contains("key was rejected") {
        " (the module is not signed with a key this node trusts, as Secure Boot requires: sign it \
         with spec.moduleLoader.container.sign, or enroll the signing key on the node)"
    } else if m.contains("invalid module format") || m.contains("exec format error") {
        " (the module was built for another kernel than the node runs)"
    } else if m.contains("unknown symbol") {
        " (a module it needs is not loaded: check depmod's modules.dep in the image, or list the \
         module in modulesLoadingOrder)"
    } else if m.contains("not found in directory") || m.contains("module not found") {
        " (the image has no such module for this kernel under dirName: check moduleName, dirName, and that \
         depmod ran when the image was built)"
    } else if m.contains("operation not permitted") {
        " (the worker may not load modules: is the worker pod privileged, and is the kernel locked down or \
         modules_disabled set?)"
    } else if m.contains("is in use") {
        " (stop what uses the module first: its device plugin, workloads, or modules that depend on it)"
    } else if m.contains("file exists") {
        " (a module with this name is already loaded: list the in-tree one in inTreeModulesToRemove)"
    } else if m.contains("builtin") {
        " (it is built into the kernel and cannot be unloaded)"
    } else {
        ""
    }
}

/// Runs steps.
pub struct Executor {
    pub node: NodePaths,
    pub mode: Mode,
    out: Box<dyn Write>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("node", &self.node)
            .field("mode", &self.mode)
            .finish()
    }
}

fn what(step: &Step) -> String {
    match step {
        Step::RemoveInTree { module, .. } => format!("removing in-tree module {module}"),
        Step::Modprobe { kind, module, .. } => match (kind, module) {
            (ModprobeKind::Load, Some(m)) => format!("loading {m}"),
            (ModprobeKind::Unload, Some(m)) => format!("unloading {m}"),
            (ModprobeKind::Load, None) => "loading (rawArgs.load)".into(),
            (ModprobeKind::Unload, None) => "unloading (rawArgs.unload)".into(),
        },
        _ => String::new(),
    }
}

impl Executor {
    /// An executor printing to stdout.
    pub fn new(node: NodePaths, mode: Mode) -> Self {
        Self::with_output(node, mode, Box::new(std::io::stdout()))
    }

    /// An executor printing (dry-run listings, modprobe's dry-run output) to `out`.
    pub fn with_output(node: NodePaths, mode: Mode, out: Box<dyn Write>) -> Self {
        Executor { node, mode, out }
    }

    fn print(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    /// Runs (or prints) `steps` in order, stopping at the first failure.
    pub fn run(&mut self, steps: &[Step]) -> Result<(), WorkerError> {
        for (i, step) in steps.iter().enumerate() {
            let n = format!("[{}/{}]", i + 1, steps.len());
            match self.mode {
                Mode::Print => {
                    self.print(&format!("{n} would {step}"));
                    continue;
                }
                Mode::ModprobeDryRun => {
                    self.print(&format!("{n} {step}"));
                    match step {
                        Step::Modprobe { argv, .. } | Step::RemoveInTree { argv, .. } => {
                            self.modprobe(step, argv)?;
                        }
                        Step::CheckModuleTree { dir } => check_tree(dir)?,
                        _ => self.print(&format!("{n} (dry run: not done)")),
                    }
                    continue;
                }
                Mode::Run => {}
            }
            tracing::info!("{n} {step}");
            self.run_step(step)?;
        }
        Ok(())
    }

    fn run_step(&mut self, step: &Step) -> Result<(), WorkerError> {
        match step {
            Step::CheckKernel { release } => {
                let running = std::fs::read_to_string(&self.node.kernel_release).map_err(|e| {
                    WorkerError::Node(format!(
                        "cannot read the running kernel from {}: {e}",
                        self.node.kernel_release.display()
                    ))
                })?;
                let running = running.trim().trim_end_matches('+');
                if running != release {
                    return Err(WorkerError::Node(format!(
                        "the node runs kernel {running}, but the config is for kernel {release}: the image's \
                         modules cannot load into this kernel (the spoke should schedule a worker for the node's \
                         current kernel)"
                    )));
                }
            }
            Step::CheckModuleTree { dir } => check_tree(dir)?,
            Step::RemoveInTree { module, argv, ours } => match self.node.module_state(module) {
                ModuleState::Absent => tracing::info!("in-tree module {module} is not loaded; nothing to remove"),
                ModuleState::BuiltIn => {
                    return Err(ModprobeError::BuiltIn { module: module.clone() }.into());
                }
                ModuleState::Loaded if *ours && self.node.out_of_tree(module) => tracing::info!(
                    "{module} is loaded from out of tree (taint O): this Module's own from an earlier load; not removed"
                ),
                ModuleState::Loaded => self.modprobe(step, argv)?,
            },
            Step::SetFirmwareClassPath { path } => {
                let param = self.node.firmware_class_path();
                if firmware::set_class_path(&param, path)? {
                    tracing::info!("firmware_class.path set to {path}");
                } else {
                    tracing::info!("firmware_class.path is already {path}; not changed");
                }
            }
            Step::CopyFirmware { from, to, files } => {
                let bytes = firmware::copy(from, to, files)?;
                tracing::info!(
                    "copied {} firmware file(s), {bytes} bytes, into {}",
                    files.len(),
                    to.display()
                );
            }
            Step::Modprobe { kind, module, argv } => {
                if let (ModprobeKind::Unload, Some(m)) = (kind, module) {
                    match self.node.module_state(m) {
                        ModuleState::Loaded => {}
                        ModuleState::Absent => {
                            tracing::info!("{m} is not loaded; nothing to unload");
                            return Ok(());
                        }
                        ModuleState::BuiltIn => {
                            return Err(ModprobeError::BuiltIn { module: m.clone() }.into());
                        }
                    }
                }
                self.modprobe(step, argv)?;
            }
            Step::RemoveFirmware { from, dir, files } => {
                let done = firmware::remove(from, dir, files)?;
                tracing::info!(
                    "removed {} firmware file(s) and {} empty director(ies) from {}",
                    done.files.len(),
                    done.dirs.len(),
                    dir.display()
                );
                for (f, why) in done.kept {
                    tracing::warn!("firmware {} left in {}: {why}", f.display(), dir.display());
                }
            }
        }
        Ok(())
    }

    fn modprobe(&mut self, step: &Step, argv: &[String]) -> Result<(), WorkerError> {
        let what = what(step);
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| WorkerError::Internal("empty command line".into()))?;
        let command = command_line(argv);
        tracing::info!("running: {command}");
        let output = Command::new(program).args(args).output().map_err(|e| {
            let reason = if e.kind() == std::io::ErrorKind::NotFound {
                "not found (install kmod in the worker image, or pass --modprobe)".to_string()
            } else {
                e.to_string()
            };
            ModprobeError::Spawn {
                what: what.clone(),
                program: program.clone(),
                reason,
            }
        })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
            if self.mode == Mode::ModprobeDryRun {
                self.print(line.trim_end());
            }
            tracing::info!("modprobe: {}", line.trim_end());
        }
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            if output.status.success() {
                tracing::warn!("{}", line.trim_end());
            } else {
                tracing::error!("{}", line.trim_end());
            }
        }
        if output.status.success() {
            return Ok(());
        }
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let message = if lines.is_empty() {
            "(modprobe printed no error message)".to_string()
        } else {
            lines[lines.len().saturating_sub(3)..].join("; ")
        };
        let status = match output.status.code() {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".into(),
        };
        Err(ModprobeError::Failed {
            what,
            command,
            status,
            hint: hint_for(&message).to_string(),
            message,
        }
        .into())
    }
}

/// The image's `lib/modules/<kernel>` must exist and hold depmod's index.
fn check_tree(dir: &Path) -> Result<(), WorkerError> {
    if !dir.is_dir() {
        return Err(WorkerError::ImageTree(format!(
            "{} does not exist: the image has no modules for this kernel under dirName (check dirName, and that \
             the image was built for this kernel)",
            dir.display()
        )));
    }
    if !dir.join("modules.dep").is_file() && !dir.join("modules.dep.bin").is_file() {
        return Err(WorkerError::ImageTree(format!(
            "{} has no modules.dep: run `depmod -b <dir> <kernel>` when building the image",
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints() {
        assert!(hint_for("modprobe: ERROR: could not insert 'a': Required key not available").contains("Secure Boot"));
        assert!(hint_for("modprobe: FATAL: Module a not found in directory /x").contains("dirName"));
        assert!(hint_for("modprobe: FATAL: Module a is in use.").contains("device plugin"));
        assert_eq!(hint_for("something else"), "");
    }

    #[test]
    fn module_state_from_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let node = NodePaths {
            sys_module: d.path().into(),
            kernel_release: d.path().join("osrelease"),
        };
        std::fs::create_dir_all(d.path().join("kmm_ci_a")).unwrap();
        std::fs::write(d.path().join("kmm_ci_a/initstate"), "live\n").unwrap();
        std::fs::create_dir_all(d.path().join("firmware_class/parameters")).unwrap();
        assert_eq!(node.module_state("kmm-ci-a"), ModuleState::Loaded);
        assert_eq!(node.module_state("firmware_class"), ModuleState::BuiltIn);
        assert_eq!(node.module_state("nope"), ModuleState::Absent);
    }
}
