//! kmm-worker in its real mode (no --dry-run) against a node laid out in temporary directories:
//! a fake `/sys/module` (which modules are loaded, `firmware_class/parameters/path`), a fake
//! running-kernel file and a temporary host firmware directory. modprobe is a small recorder
//! that logs its command line and hands every call on the image's tree (`-d`) to the real
//! modprobe with `--dry-run -S <kernel>`, so kmod still resolves the fixture modules; nothing is
//! ever loaded into this machine's kernel.

mod worker_support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use worker_support::*;

struct Node {
    _t: tempfile::TempDir,
    root: PathBuf,
    img: PathBuf,
    host: PathBuf,
    sys: PathBuf,
    osrelease: PathBuf,
    log: PathBuf,
    modprobe: PathBuf,
    kver: String,
}

impl Node {
    fn new() -> Node {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let img = root.join("image");
        let kver = image_tree(&img);
        let sys = root.join("sys/module");
        write(&sys.join("firmware_class/parameters/path"), "\n");
        let osrelease = write(&root.join("osrelease"), &format!("{kver}\n"));
        let log = root.join("modprobe.log");
        let modprobe = write(
            &root.join("bin/modprobe"),
            &format!(
                "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{log}'\ncase \" $* \" in\n  *\" -d \"*) exec modprobe --dry-run -S '{kver}' \"$@\" ;;\n  *) exit 0 ;;\nesac\n",
                log = log.display()
            ),
        );
        std::fs::set_permissions(&modprobe, std::fs::Permissions::from_mode(0o755)).unwrap();
        Node {
            host: root.join("host/var/lib/firmware"),
            _t: t,
            root,
            img,
            sys,
            osrelease,
            log,
            modprobe,
            kver,
        }
    }

    fn loaded(&self, m: &str) {
        write(&self.sys.join(m).join("initstate"), "live\n");
    }

    fn config(&self, body: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let i = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        write(
            &self.root.join(format!("config-{i}.yaml")),
            &format!(
                "kernelVersion: {}\ncontainerImage: r.example/kmm/ci:1\n{body}",
                self.kver
            ),
        )
    }

    fn worker(&self, op: &str, cfg: &Path) -> std::process::Command {
        self.worker_with(op, cfg, &self.modprobe)
    }

    fn worker_with(&self, op: &str, cfg: &Path, modprobe: &Path) -> std::process::Command {
        let mut c = worker();
        c.args(["kmod", op])
            .arg(cfg)
            .arg("--image-dir")
            .arg(&self.img)
            .arg("--firmware-host-dir")
            .arg(&self.host)
            .arg("--sysfs-module-dir")
            .arg(&self.sys)
            .arg("--kernel-release-file")
            .arg(&self.osrelease)
            .arg("--modprobe")
            .arg(modprobe);
        c
    }

    /// The recorded modprobe calls since the last call, without argv[0].
    fn calls(&self) -> Vec<String> {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        s.lines().map(String::from).collect()
    }

    fn class_path(&self) -> String {
        std::fs::read_to_string(self.sys.join("firmware_class/parameters/path")).unwrap()
    }
}

const FULL: &str = "inTreeModulesToRemove: [old_loaded, old_absent]\nmodprobe:\n  moduleName: kmm_ci_a\n  \
                    parameters: [offset=7]\n  modulesLoadingOrder: [kmm_ci_a, kmm_ci_fw]\n  firmwarePath: /firmware\n";

#[test]
fn load_then_unload_on_a_node() {
    let n = Node::new();
    n.loaded("old_loaded");
    let cfg = n.config(FULL);
    let opt = n.img.join("opt");

    let o = run(n
        .worker("load", &cfg)
        .args(["--set-firmware-class-path", "/var/lib/firmware"]));
    assert!(o.status.success());
    // Only the in-tree module that is loaded is removed; then the soft dependency, then the module.
    assert_eq!(
        n.calls(),
        [
            "-r -v -- old_loaded".to_string(),
            format!("-v -d {} -- kmm_ci_fw", opt.display()),
            format!("-v -d {} -- kmm_ci_a offset=7", opt.display()),
        ]
    );
    let err = stderr(&o);
    assert!(
        err.contains("in-tree module old_absent is not loaded; nothing to remove"),
        "{err}"
    );
    // kmod's resolution (from the recorder's dry run) in the worker's log: fw, then b, then a.
    let order: Vec<(String, String)> = insmods(
        &err.lines()
            .filter_map(|l| l.split_once("modprobe: ").map(|(_, r)| r))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert_eq!(
        order,
        [("kmm_ci_fw", ""), ("kmm_ci_b", ""), ("kmm_ci_a", "offset=7")].map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // Firmware search path set, firmware copied.
    assert_eq!(n.class_path(), "/var/lib/firmware");
    assert!(err.contains("firmware_class.path set to /var/lib/firmware"), "{err}");
    assert_eq!(
        std::fs::read(n.host.join("kmm_ci_fw.bin")).unwrap(),
        std::fs::read(n.img.join("firmware/kmm_ci_fw.bin")).unwrap()
    );
    assert_eq!(
        std::fs::read(n.host.join("kmm/extra.bin")).unwrap(),
        b"extra firmware\n"
    );
    assert!(err.contains("copied 2 firmware file(s)"), "{err}");

    // Loading again is harmless and leaves firmware_class.path alone when it already matches.
    std::fs::write(n.sys.join("firmware_class/parameters/path"), "/var/lib/firmware\n").unwrap();
    let o = run(n
        .worker("load", &cfg)
        .args(["--set-firmware-class-path", "/var/lib/firmware"]));
    assert!(o.status.success());
    assert!(stderr(&o).contains("firmware_class.path is already /var/lib/firmware; not changed"));
    assert_eq!(n.class_path(), "/var/lib/firmware\n", "written although it matched");
    n.calls();

    // Unload: kmm_ci_a is loaded, kmm_ci_fw is not (any more).
    n.loaded("kmm_ci_a");
    write(&n.host.join("other-vendor.bin"), "not ours");
    let o = run(&mut n.worker("unload", &cfg));
    assert!(o.status.success());
    assert_eq!(n.calls(), [format!("-r -v -d {} -- kmm_ci_a", opt.display())]);
    assert!(stderr(&o).contains("kmm_ci_fw is not loaded; nothing to unload"));
    // The files it placed are gone, and the directory it created; nothing else.
    assert!(!n.host.join("kmm_ci_fw.bin").exists());
    assert!(!n.host.join("kmm").exists());
    assert!(n.host.join("other-vendor.bin").exists());
    assert!(n.host.is_dir());
}

#[test]
fn unload_keeps_firmware_that_changed_since() {
    let n = Node::new();
    let cfg = n.config("modprobe:\n  moduleName: kmm_ci_fw\n  firmwarePath: /firmware\n");
    assert!(run(&mut n.worker("load", &cfg)).status.success());
    std::fs::write(n.host.join("kmm/extra.bin"), "replaced by someone else").unwrap();
    let o = run(&mut n.worker("unload", &cfg));
    assert!(o.status.success());
    assert!(!n.host.join("kmm_ci_fw.bin").exists());
    assert_eq!(
        std::fs::read_to_string(n.host.join("kmm/extra.bin")).unwrap(),
        "replaced by someone else"
    );
    assert!(stderr(&o).contains("firmware kmm/extra.bin left in"), "{}", stderr(&o));
}

#[test]
fn firmware_is_never_written_through_links_on_the_host() {
    let n = Node::new();
    let outside = n.root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&n.host).unwrap();
    std::os::unix::fs::symlink(&outside, n.host.join("kmm")).unwrap();
    let cfg = n.config("modprobe:\n  moduleName: kmm_ci_fw\n  firmwarePath: /firmware\n");
    let o = run(&mut n.worker("load", &cfg));
    assert_eq!(o.status.code(), Some(5));
    assert!(
        stderr(&o).contains("is a symbolic link, not a directory"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    // A replaced file is replaced, not written through: a link at the file's place is swapped.
    std::fs::remove_file(n.host.join("kmm")).unwrap();
    let victim = write(&outside.join("victim"), "keep me");
    std::os::unix::fs::symlink(&victim, n.host.join("kmm_ci_fw.bin")).unwrap();
    assert!(run(&mut n.worker("load", &cfg)).status.success());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(n.host.join("kmm_ci_fw.bin").symlink_metadata().unwrap().is_file());
}

#[test]
fn node_problems_have_their_own_exit_codes() {
    let n = Node::new();
    n.loaded("old_loaded");
    let cfg = n.config(FULL);

    // Another kernel on the node: 6, nothing run, nothing copied.
    std::fs::write(&n.osrelease, "6.99.0-other\n").unwrap();
    let o = run(&mut n.worker("load", &cfg));
    assert_eq!(o.status.code(), Some(6));
    assert!(stderr(&o).contains("the node runs kernel 6.99.0-other, but the config is for kernel"));
    assert!(n.calls().is_empty());
    assert!(!n.host.exists());
    std::fs::write(&n.osrelease, format!("{}+\n", n.kver)).unwrap(); // a trailing '+' is ignored

    // An in-tree module built into the kernel cannot be replaced: 4.
    std::fs::create_dir_all(n.sys.join("builtin_mod/parameters")).unwrap();
    let cfg2 = n.config("inTreeModulesToRemove: [builtin_mod]\nmodprobe:\n  moduleName: kmm_ci_a\n");
    let o = run(&mut n.worker("load", &cfg2));
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("in-tree module builtin_mod is built into the kernel"));

    // The host firmware directory is a file: 5.
    std::fs::create_dir_all(n.host.parent().unwrap()).unwrap();
    std::fs::write(&n.host, "").unwrap();
    let o = run(&mut n.worker("load", &cfg));
    assert_eq!(o.status.code(), Some(5));
    assert!(stderr(&o).contains("not a directory"), "{}", stderr(&o));
    std::fs::remove_file(&n.host).unwrap();

    // No firmware_class parameter in this sysfs: 5, with what to check.
    std::fs::remove_dir_all(n.sys.join("firmware_class")).unwrap();
    let o = run(n
        .worker("load", &cfg)
        .args(["--set-firmware-class-path", "/var/lib/firmware"]));
    assert_eq!(o.status.code(), Some(5));
    assert!(stderr(&o).contains("is the host's /sys mounted into the worker pod"));

    // modprobe missing: 4, saying what to install.
    let o = run(&mut n.worker_with("load", &cfg, Path::new("/nonexistent/modprobe")));
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("install kmod in the worker image"));
}

#[test]
fn secure_boot_refusal_is_reported_with_what_to_do() {
    let n = Node::new();
    // What kmod prints when the kernel refuses an unsigned module under Secure Boot
    // (insmod gets EKEYREJECTED/ENOKEY); reproduced here since tests never load modules.
    let refusing = write(
        &n.root.join("bin/modprobe-secureboot"),
        "#!/bin/sh\necho \"modprobe: ERROR: could not insert 'kmm_ci_a': Required key not available\" >&2\nexit 1\n",
    );
    std::fs::set_permissions(&refusing, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = n.config("modprobe:\n  moduleName: kmm_ci_a\n");
    let o = run(&mut n.worker_with("load", &cfg, &refusing));
    assert_eq!(o.status.code(), Some(4));
    let err = stderr(&o);
    let last = err.lines().last().unwrap();
    assert!(
        last.contains("ERROR load failed (exit code 4): loading kmm_ci_a"),
        "{last}"
    );
    assert!(
        last.contains("could not insert 'kmm_ci_a': Required key not available"),
        "{last}"
    );
    assert!(last.contains("Secure Boot"), "{last}");
    // JSON logs carry the same message.
    let o = run(n.worker_with("load", &cfg, &refusing).args(["--log-format", "json"]));
    let last = stderr(&o).lines().last().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["level"], "ERROR");
    assert!(
        v["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("Required key not available")
    );
}

#[test]
fn an_in_tree_module_of_the_same_name_is_replaced_but_not_our_own() {
    let n = Node::new();
    let cfg = n.config("inTreeModulesToRemove: [kmm_ci_a]\nmodprobe:\n  moduleName: kmm_ci_a\n");
    let opt = n.img.join("opt");
    // The in-tree kmm_ci_a (no out-of-tree taint) is removed before ours is loaded.
    n.loaded("kmm_ci_a");
    write(&n.sys.join("kmm_ci_a/taint"), "\n");
    assert!(run(&mut n.worker("load", &cfg)).status.success());
    assert_eq!(
        n.calls(),
        [
            "-r -v -- kmm_ci_a".to_string(),
            format!("-v -d {} -- kmm_ci_a", opt.display())
        ]
    );
    // A worker that runs again finds our own out-of-tree build loaded and leaves it.
    write(&n.sys.join("kmm_ci_a/taint"), "OE\n");
    let o = run(&mut n.worker("load", &cfg));
    assert!(o.status.success());
    assert_eq!(n.calls(), [format!("-v -d {} -- kmm_ci_a", opt.display())]);
    assert!(stderr(&o).contains("this Module's own from an earlier load; not removed"));
}
