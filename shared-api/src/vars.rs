//! Variable substitution in `containerImage`, `unsignedImage` and `filesToSign`, as upstream
//! KMM does it: a8m/envsubst with no restrictions ([`crate::envsubst`]) over the variables of
//! [`crate::kernel::components`]. An unknown variable becomes empty, as upstream; admission warns
//! about it ([`unknown_references`]) instead of refusing the object.
//!
//! Image templates get the kernel variables plus `MOD_NAME` and `MOD_NAMESPACE`; sign templates
//! get only the kernel variables (upstream's `getRelevantSign`), so `${MOD_NAME}` in `filesToSign`
//! is empty there too.

use thiserror::Error;

use crate::envsubst::{self, EnvsubstError};
use crate::kernel::{self, TooFewComponents};

/// The kernel variables, available to every template.
pub const KERNEL_VARIABLES: [&str; 6] = [
    "KERNEL_FULL_VERSION",
    "KERNEL_VERSION",
    "KERNEL_XYZ",
    "KERNEL_X",
    "KERNEL_Y",
    "KERNEL_Z",
];

/// The Module variables, available to image templates only.
pub const MODULE_VARIABLES: [&str; 2] = ["MOD_NAME", "MOD_NAMESPACE"];

/// Which field a template comes from, which decides the variables it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// `containerImage`: kernel and Module variables.
    Image,
    /// `sign.unsignedImage` and `sign.filesToSign`: kernel variables only.
    Sign,
}

impl Template {
    /// The variable names this kind of template can use.
    pub fn variables(self) -> Vec<&'static str> {
        match self {
            Self::Image => KERNEL_VARIABLES.iter().chain(&MODULE_VARIABLES).copied().collect(),
            Self::Sign => KERNEL_VARIABLES.to_vec(),
        }
    }
}

/// Why a template could not be expanded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SubstitutionError {
    /// The template is not valid envsubst syntax.
    #[error(transparent)]
    Syntax(#[from] EnvsubstError),
    /// The kernel does not split into three components; upstream refuses every template then.
    #[error(transparent)]
    Kernel(#[from] TooFewComponents),
}

/// Values for one module on one kernel.
#[derive(Debug, Clone)]
pub struct Variables {
    kernel: kernel::Components,
    module_name: String,
    module_namespace: String,
}

impl Variables {
    /// Variables for `module_namespace/module_name` on the node kernel `kernel` (raw, as the node
    /// reports it).
    pub fn new(kernel: &str, module_name: &str, module_namespace: &str) -> Result<Self, TooFewComponents> {
        Ok(Self {
            kernel: kernel::components(kernel::release(kernel))?,
            module_name: module_name.to_owned(),
            module_namespace: module_namespace.to_owned(),
        })
    }

    fn value(&self, template: Template, name: &str) -> Option<String> {
        let k = &self.kernel;
        Some(match name {
            "KERNEL_FULL_VERSION" | "KERNEL_VERSION" => k.full.clone(),
            "KERNEL_XYZ" => k.xyz(),
            "KERNEL_X" => k.x.clone(),
            "KERNEL_Y" => k.y.clone(),
            "KERNEL_Z" => k.z.clone(),
            "MOD_NAME" if template == Template::Image => self.module_name.clone(),
            "MOD_NAMESPACE" if template == Template::Image => self.module_namespace.clone(),
            _ => return None,
        })
    }

    /// Expands `template`; unknown variables become empty.
    pub fn substitute(&self, template: Template, text: &str) -> Result<String, SubstitutionError> {
        Ok(envsubst::expand(text, |name| self.value(template, name))?.text)
    }
}

/// The variables `text` uses that a template of kind `template` does not get (they expand to
/// nothing), each once; an error when `text` is not valid envsubst syntax.
pub fn unknown_references(template: Template, text: &str) -> Result<Vec<String>, SubstitutionError> {
    let known = template.variables();
    // A placeholder value: what matters is which names are looked up and not found.
    let expanded = envsubst::expand(text, |name| known.contains(&name).then(|| "x".to_owned()))?;
    Ok(expanded.unset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_eight_variables_in_an_image() {
        let v = Variables::new("6.1.0-28-amd64", "kmm_ci_a", "kmm-tests").unwrap();
        let t = "${KERNEL_FULL_VERSION}|${KERNEL_VERSION}|${KERNEL_XYZ}|${KERNEL_X}|${KERNEL_Y}|${KERNEL_Z}|${MOD_NAME}|${MOD_NAMESPACE}";
        assert_eq!(
            v.substitute(Template::Image, t).unwrap(),
            "6.1.0-28-amd64|6.1.0-28-amd64|6.1.0|6|1|0|kmm_ci_a|kmm-tests"
        );
    }

    #[test]
    fn the_kernel_is_normalised_as_upstream_does() {
        let v = Variables::new("6.6.0+", "m", "ns").unwrap();
        assert_eq!(
            v.substitute(Template::Image, "r/m:${KERNEL_FULL_VERSION}-${KERNEL_Z}")
                .unwrap(),
            "r/m:6.6.0_-0_"
        );
        assert_eq!(
            Variables::new("6.6", "m", "ns").unwrap_err().to_string(),
            "invalid kernel version \"6.6\": expected at least three components (major.minor.patch)"
        );
    }

    #[test]
    fn bare_names_defaults_and_unknown_variables() {
        let v = Variables::new("5.14.0-284.el9.x86_64", "m", "ns").unwrap();
        assert_eq!(
            v.substitute(Template::Image, "quay.io/org/m:${KERNEL_FULL_VERSION}")
                .unwrap(),
            "quay.io/org/m:5.14.0-284.el9.x86_64"
        );
        assert_eq!(
            v.substitute(Template::Image, "r/$MOD_NAME:$KERNEL_X.x").unwrap(),
            "r/m:5.x"
        );
        assert_eq!(v.substitute(Template::Image, "r:${NOPE:-dflt}").unwrap(), "r:dflt");
        assert_eq!(v.substitute(Template::Image, "r:${KERNEL_FULL_VERISON}").unwrap(), "r:");
    }

    #[test]
    fn sign_templates_do_not_get_the_module_variables() {
        let v = Variables::new("6.1.0-28-amd64", "m", "ns").unwrap();
        assert_eq!(
            v.substitute(Template::Sign, "/opt/lib/modules/${KERNEL_FULL_VERSION}/${MOD_NAME}.ko")
                .unwrap(),
            "/opt/lib/modules/6.1.0-28-amd64/.ko"
        );
        assert_eq!(
            unknown_references(Template::Sign, "/opt/${MOD_NAME}/${KERNEL_X}.ko").unwrap(),
            ["MOD_NAME"]
        );
        assert!(
            unknown_references(Template::Image, "r/${MOD_NAME}:${KERNEL_XYZ}")
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            unknown_references(Template::Image, "r:${NOPE}-$NOPE-${KERNEL_Q}").unwrap(),
            ["NOPE", "KERNEL_Q"]
        );
    }
}
