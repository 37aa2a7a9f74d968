//! Kernel version strings as nodes report them, and the forms upstream KMM derives from them.
//!
//! Upstream's rules (`internal/module/kernelmapper.go`, `internal/kernel`, `internal/utils`):
//! kernel mappings match the node's raw `status.nodeInfo.kernelVersion`; the worker looks for
//! `<dirName>/lib/modules/<raw kernel>`; for template variables the kernel is first normalised
//! (every character outside `[A-Za-z0-9._-]` becomes `_`, so `6.6.0+` gives `6.6.0_`) and split
//! on `.`, `,` and `-`, which must give at least three components.

use thiserror::Error;

/// A node's kernel release as reported, without surrounding blanks (a `+` stays: `uname -r`
/// of a kernel built from a dirty tree is `6.1.0+`, and so is its `/lib/modules` directory).
pub fn release(kernel: &str) -> &str {
    kernel.trim()
}

/// The kernel as upstream's `NormalizeVersion` writes it for templates: characters outside
/// `[A-Za-z0-9._-]` become `_`.
pub fn normalized(kernel: &str) -> String {
    kernel
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The template values upstream derives from a kernel version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Components {
    /// `KERNEL_FULL_VERSION` and `KERNEL_VERSION`: the normalised kernel.
    pub full: String,
    /// `KERNEL_X`: the first component.
    pub x: String,
    /// `KERNEL_Y`: the second component.
    pub y: String,
    /// `KERNEL_Z`: the third component (not necessarily a number: `6.6-rc1` gives `rc1`).
    pub z: String,
}

impl Components {
    /// `KERNEL_XYZ`: the first three components joined by dots.
    pub fn xyz(&self) -> String {
        format!("{}.{}.{}", self.x, self.y, self.z)
    }
}

/// A kernel version upstream cannot derive template values from.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid kernel version {0:?}: expected at least three components (major.minor.patch)")]
pub struct TooFewComponents(pub String);

/// Upstream's `KernelComponentsAsEnvVars` on the [`normalized`] kernel.
pub fn components(kernel: &str) -> Result<Components, TooFewComponents> {
    let full = normalized(kernel);
    let mut parts = full.split(['.', ',', '-']);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(x), Some(y), Some(z)) => Ok(Components {
            x: x.to_owned(),
            y: y.to_owned(),
            z: z.to_owned(),
            full: full.clone(),
        }),
        _ => Err(TooFewComponents(kernel.to_owned())),
    }
}

/// The value of the kernel-versions ClusterClaim: sorted, distinct kernel releases, one per
/// line.
pub fn claim_value<'a>(kernels: impl IntoIterator<Item = &'a str>) -> String {
    let set: std::collections::BTreeSet<&str> = kernels.into_iter().map(release).filter(|k| !k.is_empty()).collect();
    set.into_iter().collect::<Vec<_>>().join("\n")
}

/// Reads a kernel-versions claim value back (tolerating blanks and `\r`).
pub fn parse_claim_value(value: &str) -> Vec<String> {
    let set: std::collections::BTreeSet<&str> = value.lines().map(release).filter(|k| !k.is_empty()).collect();
    set.into_iter().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_is_kept_as_reported() {
        assert_eq!(release("6.1.0-28-amd64+"), "6.1.0-28-amd64+");
        assert_eq!(release(" 5.14.0-284.el9.x86_64\n"), "5.14.0-284.el9.x86_64");
    }

    #[test]
    fn normalisation_replaces_what_upstream_replaces() {
        assert_eq!(normalized("6.6.0+"), "6.6.0_");
        assert_eq!(
            normalized("5.14.0-284.25.1.el9_2.x86_64"),
            "5.14.0-284.25.1.el9_2.x86_64"
        );
        assert_eq!(normalized("6.1.0~rc1 #1"), "6.1.0_rc1__1");
    }

    #[test]
    fn components_split_on_dots_commas_and_dashes() {
        let c = components("5.14.0-284.25.1.el9_2.x86_64").unwrap();
        assert_eq!((c.x.as_str(), c.y.as_str(), c.z.as_str()), ("5", "14", "0"));
        assert_eq!(c.xyz(), "5.14.0");
        let c = components("6.6.0+").unwrap();
        assert_eq!(
            (c.full.as_str(), c.z.as_str(), c.xyz()),
            ("6.6.0_", "0_", "6.6.0_".to_owned())
        );
        let c = components("6.6-rc1").unwrap();
        assert_eq!(c.xyz(), "6.6.rc1");
        assert_eq!(
            components("6.6").unwrap_err().to_string(),
            "invalid kernel version \"6.6\": expected at least three components (major.minor.patch)"
        );
        assert!(components("rolling").is_err());
    }

    #[test]
    fn claim_is_sorted_and_distinct_and_reads_back() {
        let v = claim_value(["6.1.0-28-amd64", "5.14.0+", "6.1.0-28-amd64", ""]);
        assert_eq!(v, "5.14.0+\n6.1.0-28-amd64");
        assert_eq!(parse_claim_value(&v), vec!["5.14.0+", "6.1.0-28-amd64"]);
        assert_eq!(parse_claim_value("b\r\n\n a \n"), vec!["a", "b"]);
        assert!(parse_claim_value("").is_empty());
    }
}
