//! The layer extractor against hostile layers: each one is refused with an error naming the
//! entry and the reason, and leaves nothing behind (not even the layers unpacked before it).

mod worker_support;

use std::path::Path;

use kmm_spoke::worker::extract::{ExtractError, Extractor, Limits};
use tar::EntryType as E;
use worker_support::{Entry, gzip, tar};

/// Unpacks `layers` into `<dir>/root`; on error checks that nothing is left there.
fn extract(dir: &Path, layers: &[Vec<u8>], limits: Limits) -> Result<(), ExtractError> {
    let root = dir.join("root");
    let res = (|| {
        let mut x = Extractor::new(&root, limits)?;
        for (i, l) in layers.iter().enumerate() {
            x.add_layer(&format!("{}", i + 1), &l[..])?;
        }
        x.finish();
        Ok(())
    })();
    if res.is_err() {
        assert!(!root.exists(), "a refused extraction left {} behind", root.display());
    }
    res
}

/// A raw tar from headers and data (for extension headers the helper cannot make).
fn raw_tar(entries: Vec<(tar::Header, Vec<u8>)>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (mut h, d) in entries {
        h.set_size(d.len() as u64);
        h.set_cksum();
        b.append(&h, &d[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn header(kind: E, name: &[u8]) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h
}

fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

#[test]
fn a_good_image_with_whiteouts() {
    let t = tempfile::tempdir().unwrap();
    let l1 = gzip(&tar(&[
        Entry::Dir("opt/"),
        Entry::File("opt/lib/modules/6.1.0/kmm_ci_a.ko", b"module a"),
        Entry::File("opt/stale.txt", b"old"),
        Entry::Dir("etc/conf.d/"),
        Entry::File("etc/conf.d/lower.conf", b"lower"),
        Entry::Symlink("lib", "opt/lib"),
        Entry::Symlink("opt/lib/modules/6.1.0/build", "../../../../usr/src/x"),
        Entry::HardLink(
            "opt/lib/modules/6.1.0/kmm_ci_a_copy.ko",
            "opt/lib/modules/6.1.0/kmm_ci_a.ko",
        ),
    ]));
    let l2 = tar(&[
        Entry::File("opt/.wh.stale.txt", b""),
        Entry::File("etc/conf.d/upper.conf", b"upper"),
        Entry::File("etc/conf.d/.wh..wh..opq", b""),
        Entry::File("opt/lib/modules/6.1.0/kmm_ci_a.ko", b"module a, v2"),
    ]);
    extract(t.path(), &[l1, l2], Limits::default()).unwrap();
    let r = t.path().join("root");
    assert!(!r.join("opt/stale.txt").exists(), "whiteout not applied");
    assert!(
        !r.join("etc/conf.d/lower.conf").exists(),
        "opaque directory not applied"
    );
    assert_eq!(std::fs::read(r.join("etc/conf.d/upper.conf")).unwrap(), b"upper");
    assert_eq!(
        std::fs::read(r.join("opt/lib/modules/6.1.0/kmm_ci_a.ko")).unwrap(),
        b"module a, v2"
    );
    assert_eq!(
        std::fs::read(r.join("opt/lib/modules/6.1.0/kmm_ci_a_copy.ko")).unwrap(),
        b"module a"
    );
    assert_eq!(std::fs::read_link(r.join("lib")).unwrap(), Path::new("opt/lib"));
    assert!(!r.join("opt/.wh.stale.txt").exists());
}

#[test]
fn hostile_layers_are_refused_and_leave_nothing_behind() {
    let long_evil = format!("opt/{}/../../../evil", "d".repeat(120));
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "dot-dot path",
            tar(&[Entry::File("../evil", b"x")]),
            "../evil",
            "path contains '..'",
        ),
        (
            "dot-dot inside a path",
            tar(&[Entry::File("opt/../../evil", b"x")]),
            "opt/../../evil",
            "'..'",
        ),
        (
            "absolute path",
            tar(&[Entry::File("/etc/evil", b"x")]),
            "/etc/evil",
            "absolute path",
        ),
        (
            "absolute symlink",
            tar(&[Entry::Symlink("opt/etc", "/etc")]),
            "opt/etc",
            "absolute link target",
        ),
        (
            "escaping symlink",
            tar(&[Entry::Symlink("opt/up", "../../etc")]),
            "opt/up",
            "points outside the image",
        ),
        (
            "symlink escaping through another link",
            tar(&[Entry::Symlink("opt/here", "."), Entry::Symlink("opt/l", "here/../..")]),
            "opt/l",
            "'..' after a name",
        ),
        (
            "write through a symlink",
            tar(&[
                Entry::Dir("opt/sub/"),
                Entry::Symlink("opt/l", "sub"),
                Entry::File("opt/l/x", b"x"),
            ]),
            "opt/l/x",
            "parent opt/l is a symbolic link",
        ),
        (
            "hard link out of the tree",
            tar(&[Entry::HardLink("opt/h", "../../etc/shadow")]),
            "opt/h",
            "hard link to \"../../etc/shadow\": path contains '..'",
        ),
        (
            "absolute hard link",
            tar(&[Entry::HardLink("opt/h", "/etc/shadow")]),
            "opt/h",
            "absolute path",
        ),
        (
            "hard link to nothing in the tree",
            tar(&[Entry::HardLink("opt/h", "etc/shadow")]),
            "opt/h",
            "not a regular file already in the image",
        ),
        (
            "hard link to a symlink",
            tar(&[Entry::Symlink("opt/s", "x"), Entry::HardLink("opt/h", "opt/s")]),
            "opt/h",
            "not a regular file already in the image",
        ),
        (
            "character device",
            tar(&[Entry::Special("dev/mem", E::Char)]),
            "dev/mem",
            "device node",
        ),
        (
            "block device",
            tar(&[Entry::Special("dev/sda", E::Block)]),
            "dev/sda",
            "device node",
        ),
        ("FIFO", tar(&[Entry::Special("opt/fifo", E::Fifo)]), "opt/fifo", "FIFO"),
        (
            "GNU long name with '..'",
            raw_tar(vec![
                (
                    header(E::GNULongName, b"././@LongLink"),
                    format!("{long_evil}\0").into_bytes(),
                ),
                (header(E::Regular, b"innocent"), b"x".to_vec()),
            ]),
            "../../../evil",
            "path contains '..'",
        ),
        (
            "PAX path with '..'",
            raw_tar(vec![
                (
                    header(E::XHeader, b"PaxHeaders/innocent"),
                    pax_record("path", "../pax-evil"),
                ),
                (header(E::Regular, b"innocent"), b"x".to_vec()),
            ]),
            "../pax-evil",
            "path contains '..'",
        ),
        (
            "PAX link path escaping",
            raw_tar(vec![
                (
                    header(E::XHeader, b"PaxHeaders/l"),
                    pax_record("linkpath", "/etc/passwd"),
                ),
                (header(E::Symlink, b"opt/l"), Vec::new()),
            ]),
            "opt/l",
            "absolute link target",
        ),
        (
            "huge extension header",
            raw_tar(vec![(header(E::GNULongName, b"././@LongLink"), vec![b'a'; 2 << 20])]),
            "././@LongLink",
            "extension header of",
        ),
    ];
    for (what, layer, entry, reason) in cases {
        let t = tempfile::tempdir().unwrap();
        // A good layer first: a refusal in a later layer must remove it too.
        let good = gzip(&tar(&[Entry::File("opt/lib/modules/6.1.0/ok.ko", b"fine")]));
        let err = extract(t.path(), &[good, gzip(&layer)], Limits::default())
            .expect_err(what)
            .to_string();
        assert!(err.contains("layer 2"), "{what}: {err}");
        assert!(err.contains(entry), "{what}: entry {entry:?} not named in: {err}");
        assert!(err.contains(reason), "{what}: reason {reason:?} not in: {err}");
        // Nothing escaped either.
        for p in ["evil", "pax-evil", "root/../evil"] {
            assert!(!t.path().join(p).exists(), "{what}: {p} was written");
        }
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            0,
            "{what}: something left behind"
        );
    }
}

#[test]
fn limits_are_enforced() {
    let t = tempfile::tempdir().unwrap();
    let big = vec![0u8; 3000];
    let limits = Limits {
        max_bytes: 4096,
        max_entries: 10,
    };
    // One layer within the limit, the next one over it.
    let l1 = gzip(&tar(&[Entry::File("a", &big)]));
    let l2 = gzip(&tar(&[Entry::File("b", &big)]));
    let err = extract(t.path(), &[l1.clone(), l2], limits).unwrap_err().to_string();
    assert!(
        err.contains("entry \"b\"") && err.contains("exceeds the limit of 4096 bytes"),
        "{err}"
    );
    assert!(err.contains("--max-image-bytes"), "{err}");
    // A highly compressible gzip bomb is stopped at the limit too.
    let bomb = gzip(&tar(&[Entry::File("zeros", &vec![0u8; 8 << 20])]));
    assert!(bomb.len() < 64 << 10);
    let err = extract(t.path(), &[bomb], limits).unwrap_err().to_string();
    assert!(err.contains("exceeds the limit"), "{err}");
    // Too many entries.
    let names: Vec<String> = (0..20).map(|i| format!("d{i}/")).collect();
    let many: Vec<Entry<'_>> = names.iter().map(|n| Entry::Dir(n)).collect();
    let err = extract(t.path(), &[tar(&many)], limits).unwrap_err().to_string();
    assert!(err.contains("more than 10 entries"), "{err}");
    // The limit itself is fine.
    extract(t.path(), &[l1], limits).unwrap();
}

#[test]
fn broken_and_unsupported_layers() {
    let t = tempfile::tempdir().unwrap();
    let zstd = vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0];
    let err = extract(t.path(), &[zstd], Limits::default()).unwrap_err().to_string();
    assert!(err.contains("zstd"), "{err}");
    let mut truncated = tar(&[Entry::File("opt/a.ko", &[7u8; 4000])]);
    truncated.truncate(1500);
    let err = extract(t.path(), &[gzip(&truncated)], Limits::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer 1"), "{err}");
    let err = extract(
        t.path(),
        &[b"this is not a tar archive at all".repeat(40)],
        Limits::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("layer 1"), "{err}");
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    // An existing directory is never reused.
    std::fs::create_dir(t.path().join("root")).unwrap();
    let err = Extractor::new(&t.path().join("root"), Limits::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot create the directory"), "{err}");
    assert!(t.path().join("root").is_dir(), "an existing directory was removed");
}
