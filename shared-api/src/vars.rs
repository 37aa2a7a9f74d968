//! Variable substitution in `containerImage`, `unsignedImage` and `filesToSign`.

use thiserror::Error;

use crate::kernel;

/// Names of the variables, as written between `${` and `}`.
pub const VARIABLES: [&str; 8] = [
    "KERNEL_FULL_VERSION",
    "KERNEL_VERSION",
    "KERNEL_XYZ",
    "KERNEL_X",
    "KERNEL_Y",
    "KERNEL_Z",
    "MOD_NAME",
    "MOD_NAMESPACE",
];

/// Values for one module on one kernel.
#[derive(Debug, Clone, Copy)]
pub struct Variables<'a> {
    kernel: &'a str,
    xyz: Option<kernel::Xyz>,
    module_name: &'a str,
    module_namespace: &'a str,
}

/// Why a template could not be expanded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SubstitutionError {
    /// `${NAME}` with a name we do not define.
    #[error("unknown variable ${{{0}}}; known variables are {known}", known = VARIABLES.join(", "))]
    Unknown(String),
    /// `${` without its `}`.
    #[error("unterminated variable reference starting at byte {0}")]
    Unterminated(usize),
    /// `${KERNEL_X}` and friends on a kernel that does not start with `X.Y.Z`.
    #[error("${{{variable}}} needs a kernel version starting with X.Y.Z, got {kernel:?}")]
    NoXyz {
        /// The variable.
        variable: String,
        /// The kernel version.
        kernel: String,
    },
}

impl<'a> Variables<'a> {
    /// Variables for `module_namespace/module_name` on `kernel` (normalised here).
    pub fn new(kernel: &'a str, module_name: &'a str, module_namespace: &'a str) -> Self {
        let kernel = kernel::normalize(kernel);
        Self {
            kernel,
            xyz: kernel::xyz(kernel),
            module_name,
            module_namespace,
        }
    }

    fn value(&self, name: &str) -> Result<String, SubstitutionError> {
        let xyz = |f: fn(kernel::Xyz) -> String| {
            self.xyz.map(f).ok_or_else(|| SubstitutionError::NoXyz {
                variable: name.to_owned(),
                kernel: self.kernel.to_owned(),
            })
        };
        match name {
            "KERNEL_FULL_VERSION" | "KERNEL_VERSION" => Ok(self.kernel.to_owned()),
            "KERNEL_XYZ" => xyz(|v| format!("{}.{}.{}", v.x, v.y, v.z)),
            "KERNEL_X" => xyz(|v| v.x.to_string()),
            "KERNEL_Y" => xyz(|v| v.y.to_string()),
            "KERNEL_Z" => xyz(|v| v.z.to_string()),
            "MOD_NAME" => Ok(self.module_name.to_owned()),
            "MOD_NAMESPACE" => Ok(self.module_namespace.to_owned()),
            other => Err(SubstitutionError::Unknown(other.to_owned())),
        }
    }

    /// Expands `${NAME}` and `$NAME` references in `template`. A `$` not followed by a name is
    /// kept as it is.
    pub fn substitute(&self, template: &str) -> Result<String, SubstitutionError> {
        expand(template, |name| self.value(name))
    }
}

/// Checks that every reference in `template` names a known variable, without values.
pub fn check_references(template: &str) -> Result<(), SubstitutionError> {
    expand(template, |name| {
        if VARIABLES.contains(&name) {
            Ok(String::new())
        } else {
            Err(SubstitutionError::Unknown(name.to_owned()))
        }
    })
    .map(drop)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn expand(
    template: &str,
    mut value: impl FnMut(&str) -> Result<String, SubstitutionError>,
) -> Result<String, SubstitutionError> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(inner) = after.strip_prefix('{') {
            let end = inner
                .find('}')
                .ok_or(SubstitutionError::Unterminated(template.len() - rest.len() + pos))?;
            out.push_str(&value(&inner[..end])?);
            rest = &inner[end + 1..];
        } else {
            let len = after.find(|c| !is_name_char(c)).unwrap_or(after.len());
            if len == 0 || after.starts_with(|c: char| c.is_ascii_digit()) {
                out.push('$');
                rest = after;
            } else {
                out.push_str(&value(&after[..len])?);
                rest = &after[len..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_eight_variables() {
        let v = Variables::new("6.1.0-28-amd64+", "kmm_ci_a", "kmm-tests");
        let t = "${KERNEL_FULL_VERSION}|${KERNEL_VERSION}|${KERNEL_XYZ}|${KERNEL_X}|${KERNEL_Y}|${KERNEL_Z}|${MOD_NAME}|${MOD_NAMESPACE}";
        assert_eq!(
            v.substitute(t).unwrap(),
            "6.1.0-28-amd64|6.1.0-28-amd64|6.1.0|6|1|0|kmm_ci_a|kmm-tests"
        );
    }

    #[test]
    fn image_reference_and_bare_form() {
        let v = Variables::new("5.14.0-284.el9.x86_64", "m", "ns");
        assert_eq!(
            v.substitute("quay.io/org/m:${KERNEL_FULL_VERSION}").unwrap(),
            "quay.io/org/m:5.14.0-284.el9.x86_64"
        );
        assert_eq!(v.substitute("r/$MOD_NAME:$KERNEL_X.x").unwrap(), "r/m:5.x");
        assert_eq!(v.substitute("no variables").unwrap(), "no variables");
        assert_eq!(v.substitute("cost $ 5 and $1").unwrap(), "cost $ 5 and $1");
    }

    #[test]
    fn errors_name_the_problem() {
        let v = Variables::new("6.6", "m", "ns");
        assert_eq!(
            v.substitute("r:${KERNEL_FULL_VERISON}"),
            Err(SubstitutionError::Unknown("KERNEL_FULL_VERISON".into()))
        );
        assert_eq!(v.substitute("r:${KERNEL_X"), Err(SubstitutionError::Unterminated(2)));
        let err = v.substitute("r:${KERNEL_Z}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "${KERNEL_Z} needs a kernel version starting with X.Y.Z, got \"6.6\""
        );
        assert!(
            SubstitutionError::Unknown("X".into())
                .to_string()
                .contains("KERNEL_FULL_VERSION, KERNEL_VERSION")
        );
    }

    #[test]
    fn reference_check_without_values() {
        assert!(check_references("r/${MOD_NAME}:${KERNEL_XYZ}").is_ok());
        assert_eq!(
            check_references("r:${NOPE}"),
            Err(SubstitutionError::Unknown("NOPE".into()))
        );
    }
}
