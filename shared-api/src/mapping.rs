//! Kernel-mapping resolution: which image (and build / sign recipe) a kernel gets.
//!
//! Mappings are tried in list order; the first whose `literal` equals the kernel or whose
//! `regexp` matches it wins. Fields a mapping leaves unset fall back to the container's.

use thiserror::Error;

use crate::goregex::{GoRegex, GoRegexError};
use crate::kernel::{self, TooFewComponents};
use crate::module::{Build, KernelMapping, ModuleLoaderContainerSpec, Sign, TlsOptions};
use crate::vars::{SubstitutionError, Template, Variables};

/// Why a Module's mappings cannot be used.
#[derive(Debug, Error)]
pub enum MappingError {
    /// A `regexp` that does not compile.
    #[error("kernelMappings[{index}].regexp {pattern:?} is not a valid regular expression: {source}")]
    BadRegexp {
        /// Index of the mapping.
        index: usize,
        /// The pattern.
        pattern: String,
        /// Why Go's regexp syntax refuses it, or which construct we cannot match as Go does.
        #[source]
        source: GoRegexError,
    },
    /// Neither or both of `literal` and `regexp`.
    #[error("kernelMappings[{0}]: exactly one of literal and regexp must be set")]
    LiteralXorRegexp(usize),
    /// No image on the mapping nor on the container.
    #[error("kernelMappings[{0}]: no containerImage on the mapping nor on the container")]
    NoImage(usize),
    /// A kernel that upstream cannot derive template variables from (fewer than three
    /// components): upstream loads nothing on it, neither do we.
    #[error("kernelMappings[{index}] matches kernel {kernel:?}, but {source}")]
    Kernel {
        /// Index of the mapping.
        index: usize,
        /// The kernel.
        kernel: String,
        /// Why.
        #[source]
        source: TooFewComponents,
    },
    /// A template whose expansion is not a usable image reference (an unknown variable expands
    /// to nothing, as upstream, which can leave `repo:` behind).
    #[error("kernelMappings[{index}].{field}: {template:?} expands to {image:?}, which {reason}")]
    BadImage {
        /// Index of the mapping.
        index: usize,
        /// Field holding the template.
        field: &'static str,
        /// The template.
        template: String,
        /// What it expanded to.
        image: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A template that cannot be expanded.
    #[error("kernelMappings[{index}].{field}: {source}")]
    Substitution {
        /// Index of the mapping.
        index: usize,
        /// Field holding the template.
        field: &'static str,
        /// What went wrong.
        #[source]
        source: SubstitutionError,
    },
}

enum Matcher {
    Literal(String),
    Regexp(GoRegex),
}

/// A Module's kernel mappings with their regexps compiled once, to resolve many kernels.
pub struct Mappings<'a> {
    container: &'a ModuleLoaderContainerSpec,
    matchers: Vec<Matcher>,
}

/// Everything a kernel gets from the Module: the mapping's fields merged over the container's,
/// with variables substituted.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedMapping {
    /// Index of the mapping that matched.
    pub index: usize,
    /// The node's kernel release, as reported (the worker looks for `lib/modules/<this>`).
    pub kernel: String,
    /// The kmod image, variables substituted.
    pub container_image: String,
    /// Build recipe, if the image must be built when missing.
    pub build: Option<Build>,
    /// Signing recipe, with `unsignedImage` and `filesToSign` substituted.
    pub sign: Option<Sign>,
    /// TLS options for the registry holding `container_image`.
    pub registry_tls: TlsOptions,
    /// In-tree modules to unload first.
    pub in_tree_modules_to_remove: Vec<String>,
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

fn in_tree(list: &Option<Vec<String>>, single: &Option<String>) -> Option<Vec<String>> {
    match (list, non_empty(single)) {
        (Some(l), _) => Some(l.clone()),
        (None, Some(s)) => Some(vec![s.to_owned()]),
        (None, None) => None,
    }
}

impl<'a> Mappings<'a> {
    /// Compiles the mappings of `container`.
    pub fn compile(container: &'a ModuleLoaderContainerSpec) -> Result<Self, MappingError> {
        let matchers = container
            .kernel_mappings
            .iter()
            .enumerate()
            .map(|(index, m)| match (non_empty(&m.literal), non_empty(&m.regexp)) {
                (Some(l), None) => Ok(Matcher::Literal(l.to_owned())),
                (None, Some(p)) => GoRegex::new(p)
                    .map(Matcher::Regexp)
                    .map_err(|source| MappingError::BadRegexp {
                        index,
                        pattern: p.to_owned(),
                        source,
                    }),
                _ => Err(MappingError::LiteralXorRegexp(index)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { container, matchers })
    }

    /// The first mapping that matches the node kernel `kernel`, as reported (upstream matches the
    /// raw string: a `literal` must equal it, a `regexp` is searched in it, unanchored).
    pub fn find(&self, kernel: &str) -> Option<(usize, &'a KernelMapping)> {
        let kernel = kernel::release(kernel);
        self.matchers
            .iter()
            .position(|m| match m {
                Matcher::Literal(l) => l == kernel,
                Matcher::Regexp(r) => r.is_match(kernel),
            })
            .map(|i| (i, &self.container.kernel_mappings[i]))
    }

    /// Resolves `kernel` for the Module `namespace/name`; `Ok(None)` when no mapping matches.
    pub fn resolve(&self, kernel: &str, name: &str, namespace: &str) -> Result<Option<ResolvedMapping>, MappingError> {
        let Some((index, m)) = self.find(kernel) else {
            return Ok(None);
        };
        let c = self.container;
        let kernel = kernel::release(kernel);
        let vars = Variables::new(kernel, name, namespace).map_err(|source| MappingError::Kernel {
            index,
            kernel: kernel.to_owned(),
            source,
        })?;
        let subst = |field: &'static str, t: &str| {
            let template = if field.starts_with("sign.") {
                Template::Sign
            } else {
                Template::Image
            };
            vars.substitute(template, t)
                .map_err(|source| MappingError::Substitution { index, field, source })
        };
        let image = non_empty(&m.container_image)
            .or(non_empty(&c.container_image))
            .ok_or(MappingError::NoImage(index))?;
        let sign = match crate::recipe::relevant_sign(c.sign.as_ref(), m.sign.as_ref()) {
            None => None,
            Some(s) => Some(Sign {
                unsigned_image: non_empty(&s.unsigned_image)
                    .map(|u| subst("sign.unsignedImage", u))
                    .transpose()?,
                files_to_sign: s
                    .files_to_sign
                    .iter()
                    .map(|f| subst("sign.filesToSign", f))
                    .collect::<Result<_, _>>()?,
                ..s.clone()
            }),
        };
        let container_image = subst("containerImage", image)?;
        if let Err(reason) = crate::image::check_reference(&container_image).and_then(|()| {
            crate::image::ImageRef::parse(&container_image)
                .has_tag_or_digest()
                .then_some(())
                .ok_or_else(|| "has no tag or digest".to_owned())
        }) {
            return Err(MappingError::BadImage {
                index,
                field: "containerImage",
                template: image.to_owned(),
                image: container_image,
                reason,
            });
        }
        Ok(Some(ResolvedMapping {
            index,
            kernel: kernel.to_owned(),
            container_image,
            build: crate::recipe::relevant_build(c.build.as_ref(), m.build.as_ref()),
            sign,
            registry_tls: m.registry_tls.or(c.registry_tls).unwrap_or_default(),
            in_tree_modules_to_remove: in_tree(&m.in_tree_modules_to_remove, &m.in_tree_module_to_remove)
                .or_else(|| in_tree(&c.in_tree_modules_to_remove, &c.in_tree_module_to_remove))
                .unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::KernelMapping;

    fn mapping(literal: Option<&str>, regexp: Option<&str>, image: Option<&str>) -> KernelMapping {
        KernelMapping {
            literal: literal.map(Into::into),
            regexp: regexp.map(Into::into),
            container_image: image.map(Into::into),
            ..Default::default()
        }
    }

    fn container(mappings: Vec<KernelMapping>) -> ModuleLoaderContainerSpec {
        ModuleLoaderContainerSpec {
            container_image: Some("default.registry/org/${MOD_NAME}:${KERNEL_FULL_VERSION}".into()),
            kernel_mappings: mappings,
            ..Default::default()
        }
    }

    #[test]
    fn first_match_wins_in_list_order() {
        let c = container(vec![
            mapping(
                Some("6.0.15-300.fc37.x86_64"),
                None,
                Some("some.registry/org/my-kmod:literal"),
            ),
            mapping(
                None,
                Some(r"^.+\.fc37\.x86_64$"),
                Some("other.registry/org/m:${KERNEL_FULL_VERSION}"),
            ),
            mapping(None, Some("^.+$"), None),
        ]);
        let m = Mappings::compile(&c).unwrap();
        let r = m.resolve("6.0.15-300.fc37.x86_64", "m", "ns").unwrap().unwrap();
        assert_eq!(
            (r.index, r.container_image.as_str()),
            (0, "some.registry/org/my-kmod:literal")
        );
        // The raw kernel is matched, as upstream: `$` does not match before a trailing `+`.
        let r = m.resolve("6.1.1-300.fc37.x86_64+", "m", "ns").unwrap().unwrap();
        assert_eq!(
            (r.index, r.container_image.as_str()),
            (2, "default.registry/org/m:6.1.1-300.fc37.x86_64_")
        );
        assert_eq!(
            r.kernel, "6.1.1-300.fc37.x86_64+",
            "the worker looks under the raw release"
        );
        let r = m.resolve("6.1.0-28-amd64", "kmm_ci_a", "ns").unwrap().unwrap();
        assert_eq!(
            (r.index, r.container_image.as_str()),
            (2, "default.registry/org/kmm_ci_a:6.1.0-28-amd64")
        );
    }

    #[test]
    fn regexp_search_is_unanchored_and_on_the_raw_kernel_like_upstream() {
        let c = container(vec![
            mapping(None, Some("fc37"), Some("r/m:t")),
            mapping(None, Some(r"\+$"), Some("r/m:dirty")),
        ]);
        let m = Mappings::compile(&c).unwrap();
        assert_eq!(m.find("6.6.0+").map(|(i, _)| i), Some(1));
        assert!(m.find("6.0.15-300.fc37.x86_64").is_some());
        assert!(m.find("6.1.0-28-amd64").is_none());
        assert_eq!(m.resolve("6.1.0-28-amd64", "m", "ns").unwrap(), None);
    }

    #[test]
    fn mapping_fields_override_or_merge_with_container_fields() {
        let mut c = container(vec![
            mapping(Some("6.1.0"), None, None),
            mapping(None, Some("^5"), None),
        ]);
        c.in_tree_modules_to_remove = Some(vec!["a".into()]);
        c.registry_tls = Some(TlsOptions {
            insecure: true,
            insecure_skip_tls_verify: false,
        });
        c.sign = Some(Sign {
            unsigned_image: Some("r/u:${KERNEL_XYZ}".into()),
            files_to_sign: vec!["/opt/lib/modules/${KERNEL_FULL_VERSION}/m.ko".into()],
            ..Default::default()
        });
        c.kernel_mappings[1].in_tree_module_to_remove = Some("legacy".into());
        c.kernel_mappings[1].registry_tls = Some(TlsOptions::default());
        c.kernel_mappings[1].sign = Some(Sign {
            files_to_sign: vec!["/opt/lib/modules/${KERNEL_FULL_VERSION}/extra.ko".into()],
            ..Default::default()
        });
        let m = Mappings::compile(&c).unwrap();

        let r = m.resolve("6.1.0", "m", "ns").unwrap().unwrap();
        assert_eq!(r.in_tree_modules_to_remove, vec!["a"]);
        assert!(r.registry_tls.insecure);
        let s = r.sign.unwrap();
        assert_eq!(s.unsigned_image.as_deref(), Some("r/u:6.1.0"));
        assert_eq!(s.files_to_sign, vec!["/opt/lib/modules/6.1.0/m.ko"]);

        let r = m.resolve("5.14.0", "m", "ns").unwrap().unwrap();
        assert_eq!(r.in_tree_modules_to_remove, vec!["legacy"]);
        assert!(!r.registry_tls.insecure);
        // The mapping's sign merges onto the container's, as upstream's getRelevantSign.
        let s = r.sign.unwrap();
        assert_eq!(s.unsigned_image.as_deref(), Some("r/u:5.14.0"));
        assert_eq!(
            s.files_to_sign,
            ["/opt/lib/modules/5.14.0/m.ko", "/opt/lib/modules/5.14.0/extra.ko"]
        );
    }

    #[test]
    fn errors_name_the_mapping() {
        let c = container(vec![mapping(None, Some("^(unclosed"), None)]);
        let e = Mappings::compile(&c).err().unwrap().to_string();
        assert!(
            e.starts_with("kernelMappings[0].regexp \"^(unclosed\" is not a valid regular expression"),
            "{e}"
        );

        let c = container(vec![mapping(Some("a"), Some("b"), None)]);
        assert!(matches!(Mappings::compile(&c), Err(MappingError::LiteralXorRegexp(0))));

        let mut c = container(vec![mapping(None, Some("."), Some("r/m:${KERNEL_Z}"))]);
        let m = Mappings::compile(&c).unwrap();
        let e = m.resolve("rolling", "m", "ns").unwrap_err().to_string();
        assert_eq!(
            e,
            "kernelMappings[0] matches kernel \"rolling\", but invalid kernel version \"rolling\": expected at least three components (major.minor.patch)"
        );

        c.container_image = None;
        c.kernel_mappings[0].container_image = None;
        let m = Mappings::compile(&c).unwrap();
        assert!(matches!(m.resolve("6.1.0", "m", "ns"), Err(MappingError::NoImage(0))));
    }
}
