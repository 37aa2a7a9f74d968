//! Container image references: just enough parsing to tell a tag from a digest and to pin.

/// An image reference split into repository, tag and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef<'a> {
    /// Registry host (with port) and path.
    pub repository: &'a str,
    /// Tag, if any.
    pub tag: Option<&'a str>,
    /// Digest (`sha256:...`), if any.
    pub digest: Option<&'a str>,
}

impl<'a> ImageRef<'a> {
    /// Splits `reference` (`host:port/path:tag@sha256:...`). A `:` in the host part is a port.
    pub fn parse(reference: &'a str) -> Self {
        let (name, digest) = match reference.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (reference, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        Self {
            repository,
            tag: tag.filter(|t| !t.is_empty()),
            digest: digest.filter(|d| !d.is_empty()),
        }
    }

    /// Whether the reference names a tag or a digest (a bare name means `latest`, which we refuse).
    pub fn has_tag_or_digest(&self) -> bool {
        self.tag.is_some() || self.digest.is_some()
    }

    /// `repository@digest`: the form sent to spokes.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}@{}", self.repository, digest)
    }
}

/// Checks the characters and shape of a (substituted) image reference, returning why it is bad.
pub fn check_reference(reference: &str) -> Result<(), String> {
    if reference.is_empty() {
        return Err("is empty".into());
    }
    if let Some(c) = reference.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("contains the character {c:?}"));
    }
    if reference.len() > 4096 {
        return Err(format!("is {} characters long; the limit is 4096", reference.len()));
    }
    let r = ImageRef::parse(reference);
    if r.repository.is_empty() || r.repository.starts_with('/') || r.repository.ends_with('/') {
        return Err("has no repository name".into());
    }
    if r.repository.chars().any(|c| c.is_ascii_uppercase()) && !r.repository.contains('/') {
        return Err("repository names must be lowercase".into());
    }
    if let Some(tag) = r.tag {
        if tag.len() > 128 {
            return Err(format!("tag is {} characters long; the limit is 128", tag.len()));
        }
        if !tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '$' | '{' | '}'))
        {
            return Err(format!(
                "tag {tag:?} may only contain letters, digits, '_', '.' and '-'"
            ));
        }
    }
    if let Some(d) = r.digest {
        let Some((alg, hex)) = d.split_once(':') else {
            return Err(format!("has a digest {d:?} that is not <algorithm>:<hex>"));
        };
        if alg.is_empty() || hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("has a digest {d:?} that is not <algorithm>:<hex>"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_digests_and_ports() {
        let r = ImageRef::parse("some.registry:5000/org/my-kmod:6.0.15-300.fc37.x86_64");
        assert_eq!(r.repository, "some.registry:5000/org/my-kmod");
        assert_eq!(r.tag, Some("6.0.15-300.fc37.x86_64"));
        assert!(r.has_tag_or_digest());

        let r = ImageRef::parse("127.0.0.1:5000/kmod");
        assert_eq!((r.repository, r.tag), ("127.0.0.1:5000/kmod", None));
        assert!(!r.has_tag_or_digest());

        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let full = format!("quay.io/a/b:v1@{d}");
        let r = ImageRef::parse(&full);
        assert_eq!((r.repository, r.tag, r.digest), ("quay.io/a/b", Some("v1"), Some(d)));
        assert_eq!(r.pinned(d), format!("quay.io/a/b@{d}"));
    }

    #[test]
    fn reference_shape() {
        assert!(check_reference("quay.io/org/m:${KERNEL_FULL_VERSION}").is_ok());
        assert!(check_reference("quay.io/org/m:a b").unwrap_err().contains("' '"));
        assert!(
            check_reference("quay.io/org/m:a/b").is_ok(),
            "a ':' before the last '/' is a port"
        );
        assert!(
            check_reference("quay.io/org/m:bad!")
                .unwrap_err()
                .contains("tag \"bad!\"")
        );
        assert!(
            check_reference("quay.io/org/m@sha256:xyz")
                .unwrap_err()
                .contains("digest")
        );
        assert!(check_reference("").is_err());
    }
}
