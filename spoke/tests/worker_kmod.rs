//! kmm-worker against the real fixture modules (compiled against Debian's kernel headers and
//! depmod'ed by ci/kmods/build.sh) with real kmod: `--dry-run=modprobe` runs every modprobe
//! with `--dry-run -S <kernel>`, so kmod resolves dependencies and order from the image's tree
//! without loading anything into this machine's kernel.

mod worker_support;

use std::path::Path;
use std::process::Command;

use worker_support::*;

fn config(dir: &Path, kver: &str, body: &str) -> std::path::PathBuf {
    write(
        &dir.join("config.yaml"),
        &format!("kernelVersion: {kver}\ncontainerImage: 127.0.0.1:5000/kmm/kmm-ci:{kver}\n{body}"),
    )
}

fn load(cfg: &Path, img: &Path, host: &Path, extra: &[&str]) -> std::process::Output {
    run(worker()
        .args(["kmod", "load"])
        .arg(cfg)
        .arg("--image-dir")
        .arg(img)
        .arg("--firmware-host-dir")
        .arg(host)
        .args(extra))
}

fn owned(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn load_resolves_the_symbol_dependency_like_kmod_itself() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("image");
    let kver = image_tree(&img);
    let cfg = config(
        t.path(),
        &kver,
        "modprobe:\n  moduleName: kmm_ci_a\n  parameters: [offset=3]\n",
    );
    let o = load(&cfg, &img, &t.path().join("host"), &["--dry-run=modprobe"]);
    assert!(o.status.success());
    let out = stdout(&o);
    // kmm_ci_a needs kmm_ci_b's exported symbol: b is inserted first, then a with its parameter.
    let got = insmods(&out);
    assert_eq!(got, owned(&[("kmm_ci_b", ""), ("kmm_ci_a", "offset=3")]));
    // The exact command line the worker runs.
    let line = format!(
        "modprobe --dry-run -S {kver} -v -d {}/opt -- kmm_ci_a offset=3",
        img.display()
    );
    assert!(out.contains(&line), "missing {line:?} in:\n{out}");
    // The same answer as kmod's own dry run on that tree.
    let direct = Command::new("modprobe")
        .args(["--dry-run", "--verbose", "-d"])
        .arg(img.join("opt"))
        .args(["-S", &kver, "kmm_ci_a", "offset=3"])
        .output()
        .unwrap();
    assert!(direct.status.success());
    assert_eq!(insmods(&String::from_utf8_lossy(&direct.stdout)), got);
    // depmod recorded the dependency the worker relies on.
    let dep = std::fs::read_to_string(img.join("opt/lib/modules").join(&kver).join("modules.dep")).unwrap();
    assert!(dep.lines().any(|l| l == "kmm_ci_a.ko: kmm_ci_b.ko"), "{dep}");
}

#[test]
fn soft_dependencies_are_loaded_first_and_unloaded_last() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("image");
    let kver = image_tree(&img);
    let host = t.path().join("host");

    // kmm_ci_a with the soft dependency kmm_ci_fw: fw first, then a's symbol dependency b, then a.
    let cfg = config(
        t.path(),
        &kver,
        "modprobe:\n  moduleName: kmm_ci_a\n  parameters: [offset=5]\n  modulesLoadingOrder: [kmm_ci_a, kmm_ci_fw]\n",
    );
    let o = load(&cfg, &img, &host, &["--dry-run=modprobe"]);
    assert!(o.status.success());
    assert_eq!(
        insmods(&stdout(&o)),
        owned(&[("kmm_ci_fw", ""), ("kmm_ci_b", ""), ("kmm_ci_a", "offset=5")])
    );

    // The other way round: kmm_ci_fw needs kmm_ci_a (which needs b) loaded before it.
    let cfg = config(
        t.path(),
        &kver,
        "modprobe:\n  moduleName: kmm_ci_fw\n  modulesLoadingOrder: [kmm_ci_fw, kmm_ci_a, kmm_ci_b]\n",
    );
    let o = load(&cfg, &img, &host, &["--dry-run=modprobe"]);
    assert!(o.status.success());
    let got = insmods(&stdout(&o));
    let pos = |m: &str| {
        got.iter()
            .position(|(n, _)| n == m)
            .unwrap_or_else(|| panic!("{m} not inserted: {got:?}"))
    };
    assert!(
        pos("kmm_ci_b") < pos("kmm_ci_a") && pos("kmm_ci_a") < pos("kmm_ci_fw"),
        "{got:?}"
    );
    assert_eq!(got.last().unwrap().0, "kmm_ci_fw");

    // Unloading: the module first, then its soft dependencies in list order.
    let o = run(worker()
        .args(["kmod", "unload"])
        .arg(&cfg)
        .arg("--image-dir")
        .arg(&img)
        .arg("--firmware-host-dir")
        .arg(&host)
        .arg("--dry-run"));
    assert!(o.status.success());
    let out = stdout(&o);
    let opt = img.join("opt");
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("modprobe -r")).collect();
    assert_eq!(
        lines,
        [
            format!(
                "[1/3] would unload kmm_ci_fw if loaded: modprobe -r -v -d {} -- kmm_ci_fw",
                opt.display()
            ),
            format!(
                "[2/3] would unload kmm_ci_a if loaded: modprobe -r -v -d {} -- kmm_ci_a",
                opt.display()
            ),
            format!(
                "[3/3] would unload kmm_ci_b if loaded: modprobe -r -v -d {} -- kmm_ci_b",
                opt.display()
            ),
        ]
    );
    // And kmod accepts those removal command lines too.
    let o = run(worker()
        .args(["kmod", "unload"])
        .arg(&cfg)
        .arg("--image-dir")
        .arg(&img)
        .arg("--firmware-host-dir")
        .arg(&host)
        .arg("--dry-run=modprobe"));
    assert!(o.status.success());
}

#[test]
fn print_mode_shows_every_step_and_changes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("image");
    let kver = image_tree(&img);
    let host = t.path().join("host");
    let sys = t.path().join("sys/module");
    write(&sys.join("firmware_class/parameters/path"), "\n");
    write(&sys.join("old_driver/initstate"), "live\n");
    let cfg = config(
        t.path(),
        &kver,
        "inTreeModulesToRemove: [old_driver]\nmodprobe:\n  moduleName: kmm_ci_fw\n  firmwarePath: /firmware\n  \
         args: {load: [--first-time], unload: [--first-time]}\n",
    );
    let o = load(
        &cfg,
        &img,
        &host,
        &[
            "--dry-run",
            "--modprobe",
            "/nonexistent/modprobe",
            "--set-firmware-class-path",
            "/var/lib/firmware",
            "--sysfs-module-dir",
            sys.to_str().unwrap(),
        ],
    );
    assert!(o.status.success());
    let out = stdout(&o);
    let expect = [
        "[1/6] would check that the node runs kernel".to_string(),
        format!(
            "[2/6] would check that {}/opt/lib/modules/{kver} exists in the image",
            img.display()
        ),
        "[3/6] would remove in-tree module old_driver if loaded: /nonexistent/modprobe -r -v -- old_driver".into(),
        "[4/6] would set firmware_class.path to /var/lib/firmware (if it differs)".into(),
        format!(
            "[5/6] would copy firmware {}/firmware -> {}: kmm/extra.bin, kmm_ci_fw.bin",
            img.display(),
            host.display()
        ),
        format!(
            "[6/6] would load kmm_ci_fw: /nonexistent/modprobe -v -d {}/opt --first-time -- kmm_ci_fw",
            img.display()
        ),
    ];
    for e in &expect {
        assert!(out.contains(e.as_str()), "missing {e:?} in:\n{out}");
    }
    assert!(!host.exists(), "print mode created the host firmware directory");
    assert_eq!(
        std::fs::read_to_string(sys.join("firmware_class/parameters/path")).unwrap(),
        "\n"
    );
}

#[test]
fn modprobe_errors_are_reported_with_their_text_and_exit_code_4() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("image");
    let kver = image_tree(&img);
    let cfg = config(t.path(), &kver, "modprobe:\n  moduleName: kmm_ci_missing\n");
    let o = load(&cfg, &img, &t.path().join("host"), &["--dry-run=modprobe"]);
    assert_eq!(o.status.code(), Some(4));
    let err = stderr(&o);
    assert!(err.contains("Module kmm_ci_missing not found in directory"), "{err}");
    assert!(
        err.contains("load failed (exit code 4): loading kmm_ci_missing"),
        "{err}"
    );
    assert!(err.contains("check moduleName, dirName"), "{err}");
}

#[test]
fn image_and_config_problems_have_their_own_exit_codes() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("image");
    let kver = image_tree(&img);
    let host = t.path().join("host");

    // The image has no modules for this kernel: 3.
    let cfg = config(t.path(), "9.9.9-other", "modprobe:\n  moduleName: kmm_ci_a\n");
    let o = load(&cfg, &img, &host, &["--dry-run=modprobe"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("lib/modules/9.9.9-other does not exist"),
        "{}",
        stderr(&o)
    );

    // dirName pointing elsewhere: 3.
    let cfg = config(t.path(), &kver, "modprobe:\n  moduleName: kmm_ci_a\n  dirName: /usr\n");
    assert_eq!(load(&cfg, &img, &host, &["--dry-run=modprobe"]).status.code(), Some(3));

    // firmwarePath missing from the image: 3.
    let cfg = config(
        t.path(),
        &kver,
        "modprobe:\n  moduleName: kmm_ci_a\n  firmwarePath: /lib/firmware\n",
    );
    let o = load(&cfg, &img, &host, &["--dry-run"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("firmwarePath") && stderr(&o).contains("does not exist in the image"));

    // A firmware link leaving firmwarePath: 3.
    std::os::unix::fs::symlink("../../opt/lib", img.join("firmware/kmm/escape")).unwrap();
    let cfg = config(
        t.path(),
        &kver,
        "modprobe:\n  moduleName: kmm_ci_a\n  firmwarePath: /firmware\n",
    );
    let o = load(&cfg, &img, &host, &["--dry-run"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("kmm/escape") && stderr(&o).contains("outside"),
        "{}",
        stderr(&o)
    );

    // --image-dir that is not there: 3.
    let o = load(&cfg, &t.path().join("nope"), &host, &["--dry-run"]);
    assert_eq!(o.status.code(), Some(3));

    // Bad config: 2, naming the field.
    let cfg = config(
        t.path(),
        &kver,
        "modprobe:\n  moduleName: kmm_ci_a\n  modulesLoadingOrder: [kmm_ci_b, kmm_ci_a]\n",
    );
    let o = load(&cfg, &img, &host, &["--dry-run"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("modprobe.modulesLoadingOrder: must start with moduleName"));
    let cfg = write(&t.path().join("broken.yaml"), "kernelVersion: [\n");
    assert_eq!(load(&cfg, &img, &host, &["--dry-run"]).status.code(), Some(2));
    assert_eq!(
        load(&t.path().join("missing.yaml"), &img, &host, &["--dry-run"])
            .status
            .code(),
        Some(2)
    );
    // Neither --image-dir nor --pull: 2.
    let o = run(worker().args(["kmod", "load"]).arg(&cfg));
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn help_documents_the_exit_codes() {
    for args in [
        &["--help"][..],
        &["kmod", "load", "--help"],
        &["kmod", "unload", "--help"],
    ] {
        let o = run(worker().args(args));
        assert!(o.status.success());
        let out = stdout(&o);
        assert!(out.contains("Exit codes:"), "{out}");
        assert!(out.contains("4  modprobe failed"), "{out}");
        assert!(out.contains("6  node mismatch"), "{out}");
    }
}
