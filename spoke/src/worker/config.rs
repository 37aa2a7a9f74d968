//! Reading and checking the config file the spoke hands over (a `ModuleConfig` as YAML or JSON).

use std::path::{Component, Path, PathBuf};

use shared_api::nmc::ModuleConfig;

/// Kernel limit for module names (`MODULE_NAME_LEN` is 64 minus a pointer).
const MODULE_NAME_MAX: usize = 56;

/// A config file that cannot be used, naming the file or field and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: not a ModuleConfig: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("config: {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{0}")]
    Usage(String),
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Reads a `ModuleConfig` from a YAML (or JSON) file.
pub fn load(path: &Path) -> Result<ModuleConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|reason| ConfigError::Parse {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses a `ModuleConfig` from YAML (JSON is YAML too).
pub fn parse(text: &str) -> Result<ModuleConfig, String> {
    serde_saphyr::from_str::<ModuleConfig>(text).map_err(|e| e.to_string())
}

/// Checks a kernel module name: what modprobe and `/sys/module` accept, never an option.
pub fn check_module_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(invalid(field, "is empty"));
    }
    if name.len() > MODULE_NAME_MAX {
        return Err(invalid(
            field,
            format!(
                "{name:?} is {} characters long; the kernel's limit is {MODULE_NAME_MAX}",
                name.len()
            ),
        ));
    }
    if name.starts_with('-') {
        return Err(invalid(field, format!("{name:?} starts with '-'")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(invalid(
            field,
            format!("{name:?} contains {c:?}; module names are letters, digits, '_', '-' and '.'"),
        ));
    }
    Ok(())
}

/// The name the kernel shows under `/sys/module` (`-` becomes `_`).
pub fn sysfs_name(module: &str) -> String {
    module.replace('-', "_")
}

/// A path inside the image (`dirName`, `firmwarePath`) as a relative path without `.` or `..`.
/// `/` gives the empty path (the image root).
pub fn image_relative(field: &str, p: &str) -> Result<PathBuf, ConfigError> {
    if p.is_empty() {
        return Err(invalid(field, "is empty"));
    }
    if p.contains('\0') {
        return Err(invalid(field, "contains a NUL character"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return Err(invalid(field, format!("{p:?} contains '..'"))),
            Component::Prefix(_) => return Err(invalid(field, format!("{p:?} is not a path inside the image"))),
        }
    }
    Ok(out)
}

/// Checks the parts of the config the worker relies on. `load` selects the rules of loading
/// (rawArgs.load) or unloading (rawArgs.unload).
pub fn validate(cfg: &ModuleConfig, load: bool) -> Result<(), ConfigError> {
    let k = &cfg.kernel_version;
    if k.is_empty() {
        return Err(invalid("kernelVersion", "is empty"));
    }
    if k.contains('/') || k == "." || k == ".." || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("kernelVersion", format!("{k:?} is not a kernel release")));
    }
    for (i, m) in cfg.in_tree_modules_to_remove.iter().enumerate() {
        check_module_name(&format!("inTreeModulesToRemove[{i}]"), m)?;
    }
    if let Some(m) = &cfg.in_tree_module_to_remove {
        check_module_name("inTreeModuleToRemove", m)?;
    }
    let mp = &cfg.modprobe;
    image_relative("modprobe.dirName", &mp.dir_name)?;
    if let Some(fw) = &mp.firmware_path {
        image_relative("modprobe.firmwarePath", fw)?;
    }
    let name = mp.module_name.as_deref().filter(|n| !n.is_empty());
    match (name, &mp.raw_args) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "modprobe",
                "moduleName and rawArgs are both set; set exactly one",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "modprobe",
                "neither moduleName nor rawArgs is set; set exactly one",
            ));
        }
        (Some(n), None) => check_module_name("modprobe.moduleName", n)?,
        (None, Some(raw)) => {
            let (field, args) = if load {
                ("modprobe.rawArgs.load", &raw.load)
            } else {
                ("modprobe.rawArgs.unload", &raw.unload)
            };
            if args.is_empty() {
                return Err(invalid(field, "is empty"));
            }
            if !mp.modules_loading_order.is_empty() {
                return Err(invalid("modprobe.modulesLoadingOrder", "needs moduleName, not rawArgs"));
            }
        }
    }
    let order = &mp.modules_loading_order;
    if !order.is_empty() {
        for (i, m) in order.iter().enumerate() {
            check_module_name(&format!("modprobe.modulesLoadingOrder[{i}]"), m)?;
            if order[..i].iter().any(|o| sysfs_name(o) == sysfs_name(m)) {
                return Err(invalid("modprobe.modulesLoadingOrder", format!("lists {m:?} twice")));
            }
        }
        if let Some(n) = name
            && sysfs_name(&order[0]) != sysfs_name(n)
        {
            return Err(invalid(
                "modprobe.modulesLoadingOrder",
                format!(
                    "must start with moduleName {n:?} (it is loaded last), not {:?}",
                    order[0]
                ),
            ));
        }
    }
    for (i, p) in mp.parameters.iter().enumerate() {
        if p.is_empty() || p.chars().any(|c| c.is_control()) {
            return Err(invalid(
                &format!("modprobe.parameters[{i}]"),
                "is empty or contains control characters",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_yaml_and_json() {
        let y = "kernelVersion: 6.1.0-56-amd64\ncontainerImage: 127.0.0.1:5000/k:1\n\
                 modprobe:\n  moduleName: kmm_ci_a\n  parameters: [offset=3]\n";
        let c = parse(y).unwrap();
        assert_eq!(c.modprobe.dir_name, "/opt");
        assert_eq!(c.modprobe.parameters, vec!["offset=3"]);
        let j = r#"{"kernelVersion":"6.1","containerImage":"x:1","modprobe":{"moduleName":"a","dirName":"/m"}}"#;
        assert_eq!(parse(j).unwrap().modprobe.dir_name, "/m");
        assert!(parse("kernelVersion: [").is_err());
    }

    #[test]
    fn names_and_paths() {
        assert!(check_module_name("f", "kmm_ci-a").is_ok());
        for bad in ["", "-C", "a b", "a/b", &"x".repeat(57)] {
            assert!(check_module_name("f", bad).is_err(), "{bad}");
        }
        assert_eq!(image_relative("f", "/opt//lib/").unwrap(), PathBuf::from("opt/lib"));
        assert_eq!(image_relative("f", "/").unwrap(), PathBuf::new());
        let e = image_relative("modprobe.dirName", "/opt/../etc")
            .unwrap_err()
            .to_string();
        assert!(e.contains("modprobe.dirName") && e.contains(".."), "{e}");
    }

    fn cfg() -> ModuleConfig {
        parse("kernelVersion: 6.1.0\ncontainerImage: x:1\nmodprobe:\n  moduleName: a\n").unwrap()
    }

    #[test]
    fn validation_names_the_field() {
        assert!(validate(&cfg(), true).is_ok());
        let mut c = cfg();
        c.modprobe.modules_loading_order = vec!["b".into(), "a".into()];
        let e = validate(&c, true).unwrap_err().to_string();
        assert!(
            e.contains("modulesLoadingOrder") && e.contains("start with moduleName"),
            "{e}"
        );
        c.modprobe.modules_loading_order = vec!["a".into(), "b".into(), "b".into()];
        assert!(validate(&c, true).unwrap_err().to_string().contains("twice"));
        let mut c = cfg();
        c.modprobe.raw_args = Some(shared_api::module::ModprobeArgs {
            load: vec!["x".into()],
            unload: vec![],
        });
        assert!(validate(&c, true).unwrap_err().to_string().contains("both set"));
        c.modprobe.module_name = None;
        assert!(validate(&c, true).is_ok());
        assert!(validate(&c, false).unwrap_err().to_string().contains("rawArgs.unload"));
        let mut c = cfg();
        c.kernel_version = "../x".into();
        assert!(validate(&c, true).unwrap_err().to_string().contains("kernelVersion"));
        let mut c = cfg();
        c.in_tree_modules_to_remove = vec!["-r".into()];
        assert!(
            validate(&c, true)
                .unwrap_err()
                .to_string()
                .contains("inTreeModulesToRemove[0]")
        );
    }
}
