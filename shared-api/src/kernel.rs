//! Kernel version strings as nodes report them.

/// A node's `status.nodeInfo.kernelVersion` with surrounding blanks and one trailing `+` removed
/// (kernels built from a dirty tree report `6.1.0+`; their modules live under `6.1.0`).
pub fn normalize(kernel: &str) -> &str {
    let kernel = kernel.trim();
    kernel.strip_suffix('+').unwrap_or(kernel)
}

/// The `X.Y.Z` numbers at the start of a kernel version, when it has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xyz {
    /// Major version.
    pub x: u64,
    /// Minor version.
    pub y: u64,
    /// Patch level.
    pub z: u64,
}

/// Parses the leading `X.Y.Z` of `kernel` (`6.1.0-28-amd64` gives 6, 1, 0).
pub fn xyz(kernel: &str) -> Option<Xyz> {
    let mut parts = kernel.splitn(3, '.');
    let x = parts.next()?.parse().ok()?;
    let y = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let z = rest[..end].parse().ok()?;
    Some(Xyz { x, y, z })
}

/// The value of the kernel-versions ClusterClaim: sorted, distinct, normalised versions, one
/// per line.
pub fn claim_value<'a>(kernels: impl IntoIterator<Item = &'a str>) -> String {
    let set: std::collections::BTreeSet<&str> = kernels.into_iter().map(normalize).filter(|k| !k.is_empty()).collect();
    set.into_iter().collect::<Vec<_>>().join("\n")
}

/// Reads a kernel-versions claim value back (tolerating blanks, `\r` and a trailing `+`).
pub fn parse_claim_value(value: &str) -> Vec<String> {
    let set: std::collections::BTreeSet<&str> = value.lines().map(normalize).filter(|k| !k.is_empty()).collect();
    set.into_iter().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_plus_and_blanks_are_removed_once() {
        assert_eq!(normalize("6.1.0-28-amd64+"), "6.1.0-28-amd64");
        assert_eq!(normalize(" 5.14.0-284.el9.x86_64\n"), "5.14.0-284.el9.x86_64");
        assert_eq!(normalize("6.1.0++"), "6.1.0+");
        assert_eq!(normalize("6.1.0"), "6.1.0");
    }

    #[test]
    fn xyz_reads_the_leading_numbers() {
        assert_eq!(xyz("6.1.0-28-amd64"), Some(Xyz { x: 6, y: 1, z: 0 }));
        assert_eq!(xyz("5.14.0-284.25.1.el9_2.x86_64"), Some(Xyz { x: 5, y: 14, z: 0 }));
        assert_eq!(xyz("6.6.2"), Some(Xyz { x: 6, y: 6, z: 2 }));
        assert_eq!(xyz("6.6"), None);
        assert_eq!(xyz("rolling"), None);
        assert_eq!(xyz("6.x.1"), None);
    }

    #[test]
    fn claim_is_sorted_distinct_and_normalised_and_reads_back() {
        let v = claim_value(["6.1.0-28-amd64", "5.14.0+", "6.1.0-28-amd64", ""]);
        assert_eq!(v, "5.14.0\n6.1.0-28-amd64");
        assert_eq!(parse_claim_value(&v), vec!["5.14.0", "6.1.0-28-amd64"]);
        assert_eq!(parse_claim_value("b\r\n\n a+ \n"), vec!["a", "b"]);
        assert!(parse_claim_value("").is_empty());
    }
}
