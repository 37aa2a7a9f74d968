//! kmm-worker pulling the kmod image itself (`--pull`) from a real OCI registry (CNCF
//! distribution, built by ci/build-bins.sh) on 127.0.0.1 with htpasswd basic auth, then
//! resolving the fixture modules with real kmod (`--dry-run=modprobe`) or loading them on a
//! node laid out in temporary directories. Hostile images are refused and leave nothing in the
//! pull directory.

mod worker_support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use worker_support::*;

const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

struct Setup {
    t: tempfile::TempDir,
    reg: Registry,
    kver: String,
}

impl Setup {
    fn new() -> Setup {
        let t = tempfile::tempdir().unwrap();
        let reg = Registry::start("kmm", "s3cret-pw");
        let tree = t.path().join("tree");
        let kver = image_tree(&tree);
        write(&tree.join("opt/stale.txt"), "removed by the next layer");
        Setup { t, reg, kver }
    }

    /// The kmod image: the module tree and firmware (gzip), then a layer with a whiteout (tar).
    fn push_good(&self, tag: &str) -> String {
        let tree = self.t.path().join("tree");
        let l1 = gzip(&tar_of_dir(&tree, "."));
        let l2 = tar(&[
            Entry::File("opt/.wh.stale.txt", b""),
            Entry::File("etc/motd", b"kmm-ci\n"),
        ]);
        self.reg.push("kmm/kmm-ci", tag, vec![(l1, GZ), (l2, TAR)])
    }

    fn config(&self, name: &str, image: &str, body: &str) -> PathBuf {
        write(
            &self.t.path().join(format!("{name}.yaml")),
            &format!(
                "kernelVersion: {}\ncontainerImage: {image}\ninsecurePull: true\n{body}",
                self.kver
            ),
        )
    }

    fn secret(&self, name: &str, password: &str) -> PathBuf {
        write(&self.t.path().join(name), &self.reg.docker_config(password))
    }

    fn pull_dir(&self) -> PathBuf {
        self.t.path().join("pull")
    }

    fn worker(&self, op: &str, cfg: &Path, secret: Option<&Path>) -> std::process::Command {
        let mut c = worker();
        c.args(["kmod", op, "--pull"])
            .arg(cfg)
            .arg("--pull-dir")
            .arg(self.pull_dir())
            .arg("--pull-timeout")
            .arg("20")
            .arg("--firmware-host-dir")
            .arg(self.t.path().join("host"));
        if let Some(s) = secret {
            c.arg("--pull-secret").arg(s);
        }
        c
    }

    /// What is left in the pull directory.
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.pull_dir())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[test]
fn pull_with_the_pull_secret_and_resolve_the_modules() {
    let s = Setup::new();
    let image = s.push_good(&s.kver);
    let cfg = s.config(
        "load",
        &image,
        "modprobe:\n  moduleName: kmm_ci_a\n  parameters: [offset=2]\n  modulesLoadingOrder: [kmm_ci_a, kmm_ci_fw]\n",
    );
    let secret = s.secret("dockerconfig.json", &s.reg.password);

    let o = run(s.worker("load", &cfg, Some(&secret)).arg("--dry-run=modprobe"));
    assert!(o.status.success());
    assert_eq!(
        insmods(&stdout(&o)),
        [("kmm_ci_fw", ""), ("kmm_ci_b", ""), ("kmm_ci_a", "offset=2")].map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let err = stderr(&o);
    assert!(err.contains(&format!("(pull secret for {})", s.reg.host)), "{err}");
    assert!(err.contains("2 layer(s)"), "{err}");
    assert!(s.leftovers().is_empty(), "pulled tree not removed: {:?}", s.leftovers());

    // --keep-image keeps the unpacked tree: whiteout applied, upper layer present.
    let secret_dir = s.t.path().join("secret-volume");
    write(
        &secret_dir.join(".dockerconfigjson"),
        &s.reg.docker_config(&s.reg.password),
    );
    let o = run(s
        .worker("load", &cfg, Some(&secret_dir))
        .args(["--dry-run", "--keep-image"]));
    assert!(o.status.success());
    let left = s.leftovers();
    assert_eq!(left.len(), 1, "{left:?}");
    let root = s.pull_dir().join(&left[0]);
    assert!(root.join(format!("opt/lib/modules/{}/kmm_ci_a.ko", s.kver)).is_file());
    assert!(root.join("firmware/kmm_ci_fw.bin").is_file());
    assert!(!root.join("opt/stale.txt").exists(), "whiteout not applied");
    assert_eq!(std::fs::read_to_string(root.join("etc/motd")).unwrap(), "kmm-ci\n");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn pull_then_load_and_unload_on_a_node() {
    let s = Setup::new();
    let image = s.push_good("v1");
    let cfg = s.config(
        "fw",
        &image,
        "modprobe:\n  moduleName: kmm_ci_fw\n  firmwarePath: /firmware\n",
    );
    let secret = s.secret("dockerconfig.json", &s.reg.password);
    let sys = s.t.path().join("sys/module");
    write(&sys.join("firmware_class/parameters/path"), "\n");
    let osrelease = write(&s.t.path().join("osrelease"), &s.kver);
    let log = s.t.path().join("modprobe.log");
    let modprobe = write(
        &s.t.path().join("bin/modprobe"),
        &format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec modprobe --dry-run -S '{}' \"$@\"\n",
            log.display(),
            s.kver
        ),
    );
    std::fs::set_permissions(&modprobe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let node_args = |c: &mut std::process::Command| {
        c.arg("--sysfs-module-dir")
            .arg(&sys)
            .arg("--kernel-release-file")
            .arg(&osrelease)
            .arg("--modprobe")
            .arg(&modprobe)
            .args(["--set-firmware-class-path", "/var/lib/firmware"]);
    };
    let mut c = s.worker("load", &cfg, Some(&secret));
    node_args(&mut c);
    let o = run(&mut c);
    assert!(o.status.success());
    let host = s.t.path().join("host");
    assert!(host.join("kmm_ci_fw.bin").is_file() && host.join("kmm/extra.bin").is_file());
    assert_eq!(
        std::fs::read_to_string(sys.join("firmware_class/parameters/path")).unwrap(),
        "/var/lib/firmware"
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(calls.trim_end().ends_with("-- kmm_ci_fw"), "{calls}");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());

    write(&sys.join("kmm_ci_fw/initstate"), "live\n");
    let mut c = s.worker("unload", &cfg, Some(&secret));
    node_args(&mut c);
    assert!(run(&mut c).status.success());
    assert_eq!(
        std::fs::read_dir(&host).unwrap().count(),
        0,
        "firmware left on the host"
    );
    assert!(std::fs::read_to_string(&log).unwrap().contains("-r -v -d"));
    assert!(s.leftovers().is_empty());
}

#[test]
fn registry_and_secret_problems() {
    let s = Setup::new();
    let image = s.push_good("v1");
    let cfg = s.config("load", &image, "modprobe:\n  moduleName: kmm_ci_a\n");

    // No credentials: 3, pointing at the pull secret.
    let o = run(s.worker("load", &cfg, None).arg("--dry-run"));
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("imageRepoSecret"), "{}", stderr(&o));
    // A wrong password: 3.
    let bad = s.secret("bad.json", "wrong");
    let o = run(s.worker("load", &cfg, Some(&bad)).arg("--dry-run"));
    assert_eq!(o.status.code(), Some(3));
    assert!(!stderr(&o).contains("wrong"), "the password was logged");
    // An unreadable pull secret: 2.
    let broken = write(&s.t.path().join("broken.json"), "{nope");
    assert_eq!(
        run(s.worker("load", &cfg, Some(&broken)).arg("--dry-run"))
            .status
            .code(),
        Some(2)
    );
    // A tag that does not exist: 3.
    let secret = s.secret("dockerconfig.json", &s.reg.password);
    let missing = s.config(
        "missing",
        &format!("{}/kmm/kmm-ci:nope", s.reg.host),
        "modprobe:\n  moduleName: kmm_ci_a\n",
    );
    let o = run(s.worker("load", &missing, Some(&secret)).arg("--dry-run"));
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("pull manifest"), "{}", stderr(&o));
    // HTTPS against a plain-HTTP registry (insecurePull forgotten): 3.
    let https = write(
        &s.t.path().join("https.yaml"),
        &format!(
            "kernelVersion: {}\ncontainerImage: {image}\nmodprobe:\n  moduleName: kmm_ci_a\n",
            s.kver
        ),
    );
    assert_eq!(
        run(s.worker("load", &https, Some(&secret)).arg("--dry-run"))
            .status
            .code(),
        Some(3)
    );
    // A bad reference: 2.
    let badref = s.config("badref", "UPPER CASE/x:1", "modprobe:\n  moduleName: kmm_ci_a\n");
    assert_eq!(
        run(s.worker("load", &badref, Some(&secret)).arg("--dry-run"))
            .status
            .code(),
        Some(2)
    );
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn hostile_images_are_refused_and_leave_nothing_behind() {
    let s = Setup::new();
    let secret = s.secret("dockerconfig.json", &s.reg.password);
    let good = gzip(&tar(&[Entry::File("opt/ok.txt", b"fine")]));
    // (tag, layers with media types, expected reason, extra worker arguments)
    type Case<'a> = (&'a str, Vec<(Vec<u8>, &'a str)>, &'a str, &'a [&'a str]);
    let cases: Vec<Case<'_>> = vec![
        (
            "dotdot",
            vec![(good.clone(), GZ), (gzip(&tar(&[Entry::File("../../evil", b"x")])), GZ)],
            "path contains '..'",
            &[],
        ),
        (
            "abslink",
            vec![
                (good.clone(), GZ),
                (gzip(&tar(&[Entry::Symlink("opt/lib", "/lib")])), GZ),
            ],
            "absolute link target",
            &[],
        ),
        (
            "hardlink",
            vec![(gzip(&tar(&[Entry::HardLink("opt/shadow", "../etc/shadow")])), GZ)],
            "hard link to \"../etc/shadow\"",
            &[],
        ),
        (
            "device",
            vec![
                (good.clone(), GZ),
                (tar(&[Entry::Special("dev/kmsg", tar::EntryType::Char)]), TAR),
            ],
            "device node",
            &[],
        ),
        (
            "oversized",
            vec![(gzip(&tar(&[Entry::File("opt/big.bin", &vec![0u8; 300_000])])), GZ)],
            "exceeds the limit of 100000 bytes",
            &["--max-image-bytes", "100000"],
        ),
        (
            "zstd",
            vec![(
                vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0],
                "application/vnd.oci.image.layer.v1.tar+zstd",
            )],
            "zstd",
            &[],
        ),
    ];
    for (tag, layers, reason, extra) in cases {
        let image = s.reg.push("kmm/hostile", tag, layers);
        let cfg = s.config(tag, &image, "modprobe:\n  moduleName: kmm_ci_a\n");
        let o = run(s.worker("load", &cfg, Some(&secret)).arg("--dry-run").args(extra));
        assert_eq!(o.status.code(), Some(3), "{tag}");
        let err = stderr(&o);
        assert!(err.contains(reason), "{tag}: {reason:?} not in {err}");
        assert!(err.contains(&image), "{tag}: image not named in {err}");
        assert!(s.leftovers().is_empty(), "{tag}: left behind {:?}", s.leftovers());
        assert!(!s.t.path().join("evil").exists());
    }
}
