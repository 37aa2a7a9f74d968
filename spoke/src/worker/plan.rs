//! The pure part of the worker: (config, operation, options) → the ordered steps to run.
//!
//! Soft dependencies: `modulesLoadingOrder` lists the module first and the modules it needs
//! after it; they are loaded "the last first". The worker runs one `modprobe` per entry, from the
//! last entry to the first (moduleName, with its parameters), so each one's own symbol
//! dependencies (modules.dep) are resolved by modprobe and the soft ones by the order of the
//! calls, without depending on any `/etc/modprobe.d` in the worker's image. Unloading runs
//! `modprobe -r` in the opposite order: moduleName first (modprobe also removes its now unused
//! symbol dependencies), then the soft dependencies.

use std::fmt;
use std::path::{Path, PathBuf};

use shared_api::nmc::ModuleConfig;

use super::config::{self, ConfigError};

/// What the worker is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Load,
    Unload,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Load => "load",
            Operation::Unload => "unload",
        })
    }
}

/// The environment the steps are planned for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// The modprobe program (argv\[0\]).
    pub modprobe: String,
    /// Root of the kmod image's filesystem as the worker sees it; `dirName` and `firmwarePath`
    /// are resolved under it.
    pub image_root: PathBuf,
    /// The node's firmware directory as the worker sees it (the pod mounts the host's
    /// `/var/lib/firmware` there).
    pub firmware_host_dir: PathBuf,
    /// Value for the kernel's `firmware_class.path` (the operator's `worker.setFirmwareClassPath`);
    /// applied only to modules with a `firmwarePath`.
    pub set_firmware_class_path: Option<String>,
    /// Test mode: every modprobe runs with `--dry-run` (and, for the image's modules,
    /// `-S <kernelVersion>`), so kmod resolves the tree without touching the kernel.
    pub modprobe_dry_run: bool,
}

/// Whether a modprobe step loads or unloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModprobeKind {
    Load,
    Unload,
}

/// One thing the worker does on the node, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The node must run `release` (the config's kernelVersion).
    CheckKernel { release: String },
    /// `dir` (`<image>/<dirName>/lib/modules/<kernel>`) must exist.
    CheckModuleTree { dir: PathBuf },
    /// Remove an in-tree module if it is loaded (`argv` is the modprobe call). `ours`: this
    /// Module loads a module of the same name, so a loaded out-of-tree one (taint `O`) is taken as
    /// this Module's own, from an earlier load, and left alone.
    RemoveInTree {
        module: String,
        argv: Vec<String>,
        ours: bool,
    },
    /// Write `path` to the kernel's `firmware_class.path` unless it already holds it.
    SetFirmwareClassPath { path: String },
    /// Copy `files` (relative paths) from the image directory `from` to the host directory `to`.
    CopyFirmware {
        from: PathBuf,
        to: PathBuf,
        files: Vec<PathBuf>,
    },
    /// Run modprobe. With `module` set, an unload is skipped when the module is not loaded.
    Modprobe {
        kind: ModprobeKind,
        module: Option<String>,
        argv: Vec<String>,
    },
    /// Remove `files` (relative paths) from the host directory `dir` where they are identical to
    /// the image's copy in `from`, then the directories left empty.
    RemoveFirmware {
        from: PathBuf,
        dir: PathBuf,
        files: Vec<PathBuf>,
    },
}

/// Quotes one argument for a shell, only when needed.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '=' | ':' | ',' | '+' | '@'));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A command line as a person would type it.
pub fn command_line(argv: &[String]) -> String {
    argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
}

fn list(files: &[PathBuf]) -> String {
    if files.is_empty() {
        return "(no files)".into();
    }
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CheckKernel { release } => write!(f, "check that the node runs kernel {release}"),
            Step::CheckModuleTree { dir } => write!(f, "check that {} exists in the image", dir.display()),
            Step::RemoveInTree { module, argv, ours } => {
                write!(f, "remove in-tree module {module} if loaded: {}", command_line(argv))?;
                if *ours {
                    f.write_str(" (not if the loaded one is out-of-tree: this Module's own)")?;
                }
                Ok(())
            }
            Step::SetFirmwareClassPath { path } => {
                write!(f, "set firmware_class.path to {path} (if it differs)")
            }
            Step::CopyFirmware { from, to, files } => {
                write!(
                    f,
                    "copy firmware {} -> {}: {}",
                    from.display(),
                    to.display(),
                    list(files)
                )
            }
            Step::Modprobe { kind, module, argv } => match (kind, module) {
                (ModprobeKind::Load, Some(m)) => write!(f, "load {m}: {}", command_line(argv)),
                (ModprobeKind::Unload, Some(m)) => write!(f, "unload {m} if loaded: {}", command_line(argv)),
                (_, None) => write!(f, "run (rawArgs): {}", command_line(argv)),
            },
            Step::RemoveFirmware { from, dir, files } => write!(
                f,
                "remove firmware placed in {} (files identical to {}), then empty directories: {}",
                dir.display(),
                from.display(),
                list(files)
            ),
        }
    }
}

/// Where `dirName` is in the worker's filesystem.
pub fn module_root(cfg: &ModuleConfig, opts: &PlanOptions) -> Result<PathBuf, ConfigError> {
    Ok(join(
        &opts.image_root,
        &config::image_relative("modprobe.dirName", &cfg.modprobe.dir_name)?,
    ))
}

/// Where `firmwarePath` is in the worker's filesystem, if set.
pub fn firmware_source(cfg: &ModuleConfig, opts: &PlanOptions) -> Result<Option<PathBuf>, ConfigError> {
    match &cfg.modprobe.firmware_path {
        Some(p) if !p.is_empty() => Ok(Some(join(
            &opts.image_root,
            &config::image_relative("modprobe.firmwarePath", p)?,
        ))),
        _ => Ok(None),
    }
}

fn join(root: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// Plans `op` for `cfg`. `firmware_files` are the files found under `firmwarePath` in the image
/// (relative paths, see [`super::firmware::inventory`]); ignored without a firmwarePath.
pub fn plan(
    cfg: &ModuleConfig,
    op: Operation,
    opts: &PlanOptions,
    firmware_files: &[PathBuf],
) -> Result<Vec<Step>, ConfigError> {
    config::validate(cfg, op == Operation::Load)?;
    let mp = &cfg.modprobe;
    let dir = module_root(cfg, opts)?;
    let fw_src = firmware_source(cfg, opts)?;
    let kernel = &cfg.kernel_version;

    let base = |remove: bool, with_kernel: bool| -> Vec<String> {
        let mut v = vec![opts.modprobe.clone()];
        if opts.modprobe_dry_run {
            v.push("--dry-run".into());
            if with_kernel {
                v.push("-S".into());
                v.push(kernel.clone());
            }
        }
        if remove {
            v.push("-r".into());
        }
        v.push("-v".into());
        v
    };
    let with_dir = |remove: bool, extra: &[String]| -> Vec<String> {
        let mut v = base(remove, true);
        v.push("-d".into());
        v.push(dir.display().to_string());
        v.extend(extra.iter().cloned());
        v.push("--".into());
        v
    };
    // Raw command lines replace everything after argv[0] (and the dry-run options).
    let raw = |args: &[String]| -> Vec<String> {
        let mut v = vec![opts.modprobe.clone()];
        if opts.modprobe_dry_run {
            v.extend(["--dry-run".to_string(), "-S".to_string(), kernel.clone()]);
        }
        v.extend(args.iter().cloned());
        v
    };
    // moduleName first, then the soft dependencies (or just moduleName).
    let name = mp.module_name.clone().filter(|n| !n.is_empty());
    let order: Vec<String> = match &name {
        Some(_) if mp.modules_loading_order.len() > 1 => mp.modules_loading_order.clone(),
        Some(n) => vec![n.clone()],
        None => Vec::new(),
    };

    let mut steps = Vec::new();
    match op {
        Operation::Load => {
            if !opts.modprobe_dry_run {
                steps.push(Step::CheckKernel {
                    release: kernel.clone(),
                });
            }
            if name.is_some() {
                steps.push(Step::CheckModuleTree {
                    dir: dir.join("lib/modules").join(kernel),
                });
            }
            for m in cfg.in_tree_modules() {
                let mut argv = base(true, false);
                argv.push("--".into());
                argv.push(m.to_owned());
                let ours = order.iter().any(|o| config::sysfs_name(o) == config::sysfs_name(m));
                steps.push(Step::RemoveInTree {
                    module: m.to_owned(),
                    argv,
                    ours,
                });
            }
            if let Some(from) = &fw_src {
                if let Some(p) = &opts.set_firmware_class_path {
                    steps.push(Step::SetFirmwareClassPath { path: p.clone() });
                }
                steps.push(Step::CopyFirmware {
                    from: from.clone(),
                    to: opts.firmware_host_dir.clone(),
                    files: firmware_files.to_vec(),
                });
            }
            let load_args = mp.args.as_ref().map(|a| a.load.as_slice()).unwrap_or_default();
            match (&name, &mp.raw_args) {
                (Some(main), _) => {
                    for m in order.iter().rev() {
                        let mut argv = with_dir(false, load_args);
                        argv.push(m.clone());
                        if m == main {
                            argv.extend(mp.parameters.iter().cloned());
                        }
                        steps.push(Step::Modprobe {
                            kind: ModprobeKind::Load,
                            module: Some(m.clone()),
                            argv,
                        });
                    }
                }
                (None, Some(r)) => steps.push(Step::Modprobe {
                    kind: ModprobeKind::Load,
                    module: None,
                    argv: raw(&r.load),
                }),
                (None, None) => unreachable!("validate() requires moduleName or rawArgs"),
            }
        }
        Operation::Unload => {
            let unload_args = mp.args.as_ref().map(|a| a.unload.as_slice()).unwrap_or_default();
            match (&name, &mp.raw_args) {
                (Some(_), _) => {
                    for m in &order {
                        let mut argv = with_dir(true, unload_args);
                        argv.push(m.clone());
                        steps.push(Step::Modprobe {
                            kind: ModprobeKind::Unload,
                            module: Some(m.clone()),
                            argv,
                        });
                    }
                }
                (None, Some(r)) => steps.push(Step::Modprobe {
                    kind: ModprobeKind::Unload,
                    module: None,
                    argv: raw(&r.unload),
                }),
                (None, None) => unreachable!("validate() requires moduleName or rawArgs"),
            }
            if let Some(from) = &fw_src {
                steps.push(Step::RemoveFirmware {
                    from: from.clone(),
                    dir: opts.firmware_host_dir.clone(),
                    files: firmware_files.to_vec(),
                });
            }
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_api::module::ModprobeArgs;

    fn opts() -> PlanOptions {
        PlanOptions {
            modprobe: "modprobe".into(),
            image_root: "/img".into(),
            firmware_host_dir: "/var/lib/firmware".into(),
            set_firmware_class_path: None,
            modprobe_dry_run: false,
        }
    }

    fn cfg(yaml_modprobe: &str) -> ModuleConfig {
        config::parse(&format!(
            "kernelVersion: 6.1.0-56-amd64\ncontainerImage: r/k:1\nmodprobe:\n{yaml_modprobe}"
        ))
        .unwrap()
    }

    fn argvs(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Modprobe { argv, .. } | Step::RemoveInTree { argv, .. } => Some(command_line(argv)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn simple_load_and_unload() {
        let c = cfg("  moduleName: kmm_ci_a\n  parameters: [offset=3, 'name=a b']\n");
        let s = plan(&c, Operation::Load, &opts(), &[]).unwrap();
        assert_eq!(
            s[..2],
            [
                Step::CheckKernel {
                    release: "6.1.0-56-amd64".into()
                },
                Step::CheckModuleTree {
                    dir: "/img/opt/lib/modules/6.1.0-56-amd64".into()
                }
            ]
        );
        assert_eq!(argvs(&s), ["modprobe -v -d /img/opt -- kmm_ci_a offset=3 'name=a b'"]);
        let s = plan(&c, Operation::Unload, &opts(), &[]).unwrap();
        assert_eq!(argvs(&s), ["modprobe -r -v -d /img/opt -- kmm_ci_a"]);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn soft_dependencies_last_first_and_reverse_on_unload() {
        let c = cfg(
            "  moduleName: a\n  parameters: [p=1]\n  modulesLoadingOrder: [a, b, c]\n  args: {load: [--first-time], unload: [--syslog]}\n",
        );
        let s = plan(&c, Operation::Load, &opts(), &[]).unwrap();
        assert_eq!(
            argvs(&s),
            [
                "modprobe -v -d /img/opt --first-time -- c",
                "modprobe -v -d /img/opt --first-time -- b",
                "modprobe -v -d /img/opt --first-time -- a p=1",
            ]
        );
        let s = plan(&c, Operation::Unload, &opts(), &[]).unwrap();
        assert_eq!(
            argvs(&s),
            [
                "modprobe -r -v -d /img/opt --syslog -- a",
                "modprobe -r -v -d /img/opt --syslog -- b",
                "modprobe -r -v -d /img/opt --syslog -- c",
            ]
        );
    }

    #[test]
    fn in_tree_firmware_and_dry_run() {
        let c = config::parse(
            "kernelVersion: 6.1.0\ncontainerImage: r/k:1\ninTreeModulesToRemove: [old_a, old-b]\n\
             modprobe:\n  moduleName: a\n  dirName: /\n  firmwarePath: /firmware\n",
        )
        .unwrap();
        let mut o = opts();
        o.set_firmware_class_path = Some("/var/lib/firmware".into());
        o.modprobe_dry_run = true;
        let files = vec![PathBuf::from("a.bin"), PathBuf::from("sub/b.bin")];
        let s = plan(&c, Operation::Load, &o, &files).unwrap();
        assert_eq!(
            s,
            vec![
                Step::CheckModuleTree {
                    dir: "/img/lib/modules/6.1.0".into()
                },
                Step::RemoveInTree {
                    module: "old_a".into(),
                    argv: ["modprobe", "--dry-run", "-r", "-v", "--", "old_a"]
                        .map(String::from)
                        .to_vec(),
                    ours: false,
                },
                Step::RemoveInTree {
                    module: "old-b".into(),
                    argv: ["modprobe", "--dry-run", "-r", "-v", "--", "old-b"]
                        .map(String::from)
                        .to_vec(),
                    ours: false,
                },
                Step::SetFirmwareClassPath {
                    path: "/var/lib/firmware".into()
                },
                Step::CopyFirmware {
                    from: "/img/firmware".into(),
                    to: "/var/lib/firmware".into(),
                    files: files.clone()
                },
                Step::Modprobe {
                    kind: ModprobeKind::Load,
                    module: Some("a".into()),
                    argv: ["modprobe", "--dry-run", "-S", "6.1.0", "-v", "-d", "/img", "--", "a"]
                        .map(String::from)
                        .to_vec()
                },
            ]
        );
        let s = plan(&c, Operation::Unload, &o, &files).unwrap();
        assert_eq!(
            s.last().unwrap(),
            &Step::RemoveFirmware {
                from: "/img/firmware".into(),
                dir: "/var/lib/firmware".into(),
                files
            }
        );
        assert!(
            s[0].to_string()
                .starts_with("unload a if loaded: modprobe --dry-run -S 6.1.0 -r -v -d /img -- a")
        );
    }

    #[test]
    fn raw_args_are_verbatim() {
        let mut c = cfg("  rawArgs: {load: [-d, /opt, x, 'p=1'], unload: [-r, x]}\n");
        c.modprobe.raw_args = Some(ModprobeArgs {
            load: vec!["-d".into(), "/opt".into(), "x".into(), "p=1".into()],
            unload: vec!["-r".into(), "x".into()],
        });
        let s = plan(&c, Operation::Load, &opts(), &[]).unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(argvs(&s), ["modprobe -d /opt x p=1"]);
        let s = plan(&c, Operation::Unload, &opts(), &[]).unwrap();
        assert_eq!(argvs(&s), ["modprobe -r x"]);
        assert_eq!(s[0].to_string(), "run (rawArgs): modprobe -r x");
    }

    #[test]
    fn firmware_class_path_only_with_firmware() {
        let c = cfg("  moduleName: a\n");
        let mut o = opts();
        o.set_firmware_class_path = Some("/var/lib/firmware".into());
        let s = plan(&c, Operation::Load, &o, &[]).unwrap();
        assert!(!s.iter().any(|s| matches!(s, Step::SetFirmwareClassPath { .. })));
    }

    #[test]
    fn bad_config_is_refused() {
        let c = cfg("  moduleName: a\n  modulesLoadingOrder: [b, a]\n");
        assert!(plan(&c, Operation::Load, &opts(), &[]).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a=b"), "a=b");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
