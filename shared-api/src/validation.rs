//! Spec validation shared by the admission webhooks, the offline `validate` commands and the
//! controllers (which put the same messages into conditions and events).
//!
//! Every rejection names the field, as a path from the object's root, and the reason. All
//! problems are reported at once, so an administrator fixes a manifest in one round.

use std::collections::HashSet;
use std::fmt;

use k8s_openapi::api::core::v1::{Toleration, Volume};

use crate::goregex::GoRegex;
use crate::image::{ImageRef, check_reference};
use crate::labels;
use crate::mcm::ManagedClusterModule;
use crate::module::{
    Build, DevicePluginContainerSpec, DraSpec, KUBELET_DEVICE_PLUGINS_DIR, KUBELET_DEVICE_PLUGINS_VOLUME, ModprobeArgs,
    Module, ModuleLoaderContainerSpec, ModuleSpec, Sign,
};
use crate::preflight::PreflightValidationSpec;
use crate::vars::{Template, unknown_references};

/// Upstream KMM's limit on the length of a Module's name plus its namespace: the longest label
/// key it derives from them (`kmm.node.kubernetes.io/version-schedule-pod.<ns>.<name>` style
/// keys) must fit the 63 characters of a label name.
pub const MAX_NAME_AND_NAMESPACE: usize = 41;

/// Where device plugin and DRA driver pods may mount host paths (upstream KMM's list): a plugin
/// that mounts `/` or `/etc` owns the node.
pub const ALLOWED_HOST_PATH_PREFIXES: [&str; 5] = ["/dev", "/sys", "/var", "/opt", "/run"];

/// One rejected field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field from the object's root, e.g. `spec.moduleLoader.container.kernelMappings[1].regexp`.
    pub field: String,
    /// Why the value is rejected.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// All the problems of one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    /// `Kind namespace/name` or `Kind name`.
    pub object: String,
    /// The rejected fields, in spec order.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is invalid: ", self.object)?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    /// The first error whose field is `field`, for tests and for picking a condition message.
    pub fn find(&self, field: &str) -> Option<&FieldError> {
        self.errors.iter().find(|e| e.field == field)
    }
}

/// What is accepted but probably not meant (an unknown template variable, which expands to
/// nothing; a Module with no kernel mapping): admission returns these as warnings, which kubectl
/// prints, and the controllers put them into a condition.
pub type Warnings = Vec<FieldError>;

#[derive(Default)]
struct Errors {
    errors: Vec<FieldError>,
    warnings: Warnings,
}

impl Errors {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn warn(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.warnings.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn finish(self, object: String) -> Result<Warnings, ValidationErrors> {
        if self.errors.is_empty() {
            Ok(self.warnings)
        } else {
            Err(ValidationErrors {
                object,
                errors: self.errors,
            })
        }
    }
}

/// Namespace assumed for a namespaced object that does not name one (kubectl's default).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Validates a Module (creation, or any update: combine with [`validate_module_update`]).
pub fn validate_module(module: &Module) -> Result<Warnings, ValidationErrors> {
    let name = module.metadata.name.as_deref().unwrap_or_default();
    let namespace = module.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let mut e = Errors::default();
    module_spec(&mut e, "spec", name, namespace, &module.spec);
    e.finish(format!("Module {namespace}/{name}"))
}

/// Validates an update of a Module: the new object, and the rules that compare it to the old one.
pub fn validate_module_update(old: &Module, new: &Module) -> Result<Warnings, ValidationErrors> {
    let name = new.metadata.name.as_deref().unwrap_or_default();
    let namespace = new.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let mut e = Errors::default();
    module_spec(&mut e, "spec", name, namespace, &new.spec);
    module_spec_transition(&mut e, "spec", &old.spec, &new.spec);
    e.finish(format!("Module {namespace}/{name}"))
}

/// Validates a ManagedClusterModule: its own fields and its Module spec as the spokes will get it
/// (named after the MCM, in `spokeNamespace`).
pub fn validate_mcm(mcm: &ManagedClusterModule) -> Result<Warnings, ValidationErrors> {
    let name = mcm.metadata.name.as_deref().unwrap_or_default();
    let mut e = Errors::default();
    mcm_spec(&mut e, name, mcm);
    e.finish(format!("ManagedClusterModule {name}"))
}

/// Validates an update of a ManagedClusterModule.
pub fn validate_mcm_update(
    old: &ManagedClusterModule,
    new: &ManagedClusterModule,
) -> Result<Warnings, ValidationErrors> {
    let name = new.metadata.name.as_deref().unwrap_or_default();
    let mut e = Errors::default();
    mcm_spec(&mut e, name, new);
    module_spec_transition(&mut e, "spec.moduleSpec", &old.spec.module_spec, &new.spec.module_spec);
    if old.spec.spoke_namespace != new.spec.spoke_namespace {
        // Moving would orphan the Modules already on the spokes under the old namespace.
        e.push(
            "spec.spokeNamespace",
            format!(
                "cannot be changed (from {:?} to {:?}); create a new ManagedClusterModule instead",
                old.spec.spoke_namespace, new.spec.spoke_namespace
            ),
        );
    }
    e.finish(format!("ManagedClusterModule {name}"))
}

/// Validates a PreflightValidation (either version: they share the spec) named `name`.
pub fn validate_preflight(name: &str, spec: &PreflightValidationSpec) -> Result<Warnings, ValidationErrors> {
    let mut e = Errors::default();
    if let Err(reason) = check_kernel_version(&spec.kernel_version) {
        e.push("spec.kernelVersion", reason);
    }
    e.finish(format!("PreflightValidation {name}"))
}

/// Checks that `kernel` looks like a kernel release (`uname -r`), e.g. `6.1.0-28-amd64`.
pub fn check_kernel_version(kernel: &str) -> Result<(), String> {
    if kernel.is_empty() {
        return Err("is required".into());
    }
    if kernel.len() > 256 {
        return Err(format!("is {} characters long; the limit is 256", kernel.len()));
    }
    if let Some(c) = kernel
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+' | '~')))
    {
        return Err(format!(
            "{kernel:?} contains {c:?}; a kernel version is like 6.1.0-28-amd64"
        ));
    }
    if !kernel.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "{kernel:?} does not start with a version number; a kernel version is like 6.1.0-28-amd64"
        ));
    }
    // As upstream: a kernel must give the three components templates are made from.
    crate::kernel::components(kernel).map_err(|e| e.to_string())?;
    Ok(())
}

fn mcm_spec(e: &mut Errors, name: &str, mcm: &ManagedClusterModule) {
    let ns = &mcm.spec.spoke_namespace;
    if let Err(r) = labels::check_dns_label(ns) {
        e.push(
            "spec.spokeNamespace",
            format!("{ns:?} is not a valid namespace name: it {r}"),
        );
    }
    selector(e, "spec.selector", &mcm.spec.selector);
    module_spec(e, "spec.moduleSpec", name, ns, &mcm.spec.module_spec);
}

fn module_spec_transition(e: &mut Errors, root: &str, old: &ModuleSpec, new: &ModuleSpec) {
    let version = |s: &ModuleSpec| s.module_loader.as_ref().map(|l| l.container.version.is_some());
    if let (Some(was), Some(is)) = (version(old), version(new))
        && was != is
    {
        let what = if is { "added" } else { "removed" };
        e.push(
            format!("{root}.moduleLoader.container.version"),
            format!("cannot be {what} on update; recreate the Module to switch between versioned and unversioned"),
        );
    }
}

fn selector(e: &mut Errors, field: &str, sel: &std::collections::BTreeMap<String, String>) {
    for (k, v) in sel {
        if let Err(r) = labels::check_qualified_name(k) {
            e.push(format!("{field}[{k:?}]"), format!("is not a valid label key: {r}"));
        }
        if let Err(err) = labels::label_value(v) {
            e.push(format!("{field}[{k:?}]"), err.to_string());
        }
    }
}

fn module_spec(e: &mut Errors, root: &str, name: &str, namespace: &str, spec: &ModuleSpec) {
    selector(e, &format!("{root}.selector"), &spec.selector);
    if spec.module_loader.is_none() && spec.device_plugin.is_none() && spec.dra.is_none() {
        // Upstream accepts it (its hub documentation shows one); it does nothing.
        e.warn(
            root,
            "sets none of moduleLoader, devicePlugin and dra, so it does nothing",
        );
    }
    if spec.dra.is_some() && spec.device_plugin.is_some() {
        e.push(
            format!("{root}.dra"),
            "spec.dra and spec.devicePlugin are mutually exclusive",
        );
    }
    if let Some(s) = &spec.image_repo_secret
        && s.name.is_empty()
    {
        e.push(format!("{root}.imageRepoSecret.name"), "must not be empty");
    }
    let length = name.len() + namespace.len();
    if length > MAX_NAME_AND_NAMESPACE {
        e.push(
            "metadata.name",
            format!(
                "name {name:?} and namespace {namespace:?} have a combined length of {length} characters; the limit is {MAX_NAME_AND_NAMESPACE}, as in upstream KMM, so that the node labels derived from them fit"
            ),
        );
    }
    tolerations(e, &format!("{root}.tolerations"), &spec.tolerations);
    if let Some(loader) = &spec.module_loader {
        let at = format!("{root}.moduleLoader");
        service_account(
            e,
            &format!("{at}.serviceAccountName"),
            loader.service_account_name.as_deref(),
        );
        container(e, &format!("{at}.container"), &loader.container);
    }
    if let Some(dp) = &spec.device_plugin {
        let at = format!("{root}.devicePlugin");
        pod_containers(e, &at, &dp.container, dp.init_container.as_ref());
        service_account(
            e,
            &format!("{at}.serviceAccountName"),
            dp.service_account_name.as_deref(),
        );
        host_paths(e, &at, &dp.volumes);
        device_plugin_volumes(e, &at, &dp.volumes, &dp.container, dp.init_container.as_ref());
    }
    if let Some(dra) = &spec.dra {
        dra_spec(e, &format!("{root}.dra"), dra);
    }
}

fn pod_containers(
    e: &mut Errors,
    at: &str,
    container: &DevicePluginContainerSpec,
    init: Option<&DevicePluginContainerSpec>,
) {
    if container.image.is_empty() {
        e.push(format!("{at}.container.image"), "is required");
    }
    if let Some(init) = init
        && init.image.is_empty()
    {
        e.push(format!("{at}.initContainer.image"), "is required");
    }
}

fn dra_spec(e: &mut Errors, at: &str, dra: &DraSpec) {
    pod_containers(e, at, &dra.container, dra.init_container.as_ref());
    service_account(
        e,
        &format!("{at}.serviceAccountName"),
        dra.service_account_name.as_deref(),
    );
    host_paths(e, at, &dra.volumes);
    if dra.driver_name.is_empty() {
        e.push(format!("{at}.driverName"), "is required");
    } else if let Err(r) = labels::check_dns_subdomain(&dra.driver_name) {
        e.push(
            format!("{at}.driverName"),
            format!("{:?} is not a valid DNS subdomain: it {r}", dra.driver_name),
        );
    }
    let mut seen = HashSet::new();
    for (i, dc) in dra.device_classes.iter().enumerate() {
        let field = format!("{at}.deviceClasses[{i}].name");
        if dc.name.is_empty() {
            e.push(field, "is required");
        } else if let Err(r) = labels::check_dns_subdomain(&dc.name) {
            e.push(field, format!("{:?} is not a valid DNS subdomain: it {r}", dc.name));
        } else if !seen.insert(dc.name.as_str()) {
            e.push(field, format!("{:?} is a duplicate", dc.name));
        }
    }
}

/// Upstream's rule for device plugin and DRA driver volumes.
fn host_paths(e: &mut Errors, at: &str, volumes: &[Volume]) {
    for (i, v) in volumes.iter().enumerate() {
        let Some(hp) = &v.host_path else { continue };
        let clean = clean_path(&hp.path);
        let allowed = ALLOWED_HOST_PATH_PREFIXES
            .iter()
            .any(|p| clean == *p || clean.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')));
        if !allowed {
            e.push(
                format!("{at}.volumes[{i}].hostPath.path"),
                format!(
                    "{:?} is not allowed; only paths under {} are, as in upstream KMM",
                    hp.path,
                    ALLOWED_HOST_PATH_PREFIXES.join(", ")
                ),
            );
        }
    }
}

/// Go's `filepath.Clean` for absolute paths: `.` and empty segments dropped, `..` applied (never
/// above `/`). A relative path cleans to something that starts with no `/`, which no allowed
/// prefix matches.
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    if path.starts_with('/') {
        format!("/{}", parts.join("/"))
    } else {
        parts.join("/")
    }
}

/// Upstream's toleration rules (the API server's own, checked here so the Module is refused
/// rather than every worker pod).
fn tolerations(e: &mut Errors, at: &str, tolerations: &[Toleration]) {
    for (i, t) in tolerations.iter().enumerate() {
        let field = format!("{at}[{i}]");
        let key = t.key.as_deref().unwrap_or_default();
        let op = t.operator.as_deref().unwrap_or_default();
        let value = t.value.as_deref().unwrap_or_default();
        let effect = t.effect.as_deref().unwrap_or_default();
        if !key.is_empty()
            && let Err(r) = labels::check_qualified_name(key)
        {
            e.push(format!("{field}.key"), format!("{key:?} is not a valid key: {r}"));
        }
        if key.is_empty() && op != "Exists" {
            e.push(format!("{field}.operator"), "must be Exists when key is empty");
        }
        if t.toleration_seconds.is_some() && effect != "NoExecute" {
            e.push(
                format!("{field}.effect"),
                "must be NoExecute when tolerationSeconds is set",
            );
        }
        match op {
            "" | "Equal" => {
                if let Err(err) = labels::label_value(value) {
                    e.push(format!("{field}.value"), err.to_string());
                }
            }
            "Exists" if !value.is_empty() => {
                e.push(format!("{field}.value"), "must be empty when operator is Exists");
            }
            "Exists" => {}
            other => e.push(
                format!("{field}.operator"),
                format!("{other:?} is not a valid operator; allowed values are Equal and Exists"),
            ),
        }
        if !matches!(effect, "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            e.push(
                format!("{field}.effect"),
                format!(
                    "{effect:?} is not a valid effect; allowed values are NoSchedule, PreferNoSchedule and NoExecute"
                ),
            );
        }
    }
}

/// The volumes and mounts of the device plugin pod, which the API server would otherwise refuse
/// only when the DaemonSet is applied, far from the Module.
fn device_plugin_volumes(
    e: &mut Errors,
    at: &str,
    volumes: &[Volume],
    container: &DevicePluginContainerSpec,
    init: Option<&DevicePluginContainerSpec>,
) {
    let mut names = HashSet::from([KUBELET_DEVICE_PLUGINS_VOLUME]);
    for (i, v) in volumes.iter().enumerate() {
        let field = format!("{at}.volumes[{i}].name");
        if v.name == KUBELET_DEVICE_PLUGINS_VOLUME {
            e.push(
                field,
                format!(
                    "{:?} is reserved: the operator adds that volume for {KUBELET_DEVICE_PLUGINS_DIR}",
                    v.name
                ),
            );
        } else if let Err(r) = labels::check_dns_label(&v.name) {
            e.push(field, format!("{:?} is not a valid volume name: it {r}", v.name));
        } else if !names.insert(&v.name) {
            e.push(field, format!("{:?} is used by another volume", v.name));
        }
    }
    let containers = [("container", Some(container)), ("initContainer", init)];
    for (which, c) in containers {
        let Some(c) = c else { continue };
        let mut paths = HashSet::new();
        for (i, m) in c.volume_mounts.iter().enumerate() {
            let field = format!("{at}.{which}.volumeMounts[{i}]");
            if !names.contains(m.name.as_str()) {
                e.push(
                    format!("{field}.name"),
                    format!("no volume {:?} in {at}.volumes", m.name),
                );
            }
            let path = m.mount_path.trim_end_matches('/');
            if which == "container" && path == KUBELET_DEVICE_PLUGINS_DIR {
                e.push(
                    format!("{field}.mountPath"),
                    format!("the operator already mounts {KUBELET_DEVICE_PLUGINS_DIR} into the device plugin container; remove this mount"),
                );
            } else if !paths.insert(path) {
                e.push(
                    format!("{field}.mountPath"),
                    format!("{:?} is mounted twice in this container", m.mount_path),
                );
            }
        }
    }
}

fn service_account(e: &mut Errors, field: &str, sa: Option<&str>) {
    if let Some(sa) = sa
        && let Err(r) = labels::check_dns_subdomain(sa)
    {
        e.push(field, format!("{sa:?} is not a valid ServiceAccount name: it {r}"));
    }
}

fn absolute_clean(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must be an absolute path"));
    }
    if path.split('/').any(|p| p == "..") {
        return Err(format!("{path:?} must not contain '..'"));
    }
    Ok(())
}

fn container(e: &mut Errors, at: &str, c: &ModuleLoaderContainerSpec) {
    let m = &c.modprobe;
    let mp = format!("{at}.modprobe");
    let module_name = m.module_name.as_deref().filter(|n| !n.is_empty());
    match (module_name, &m.raw_args) {
        (Some(_), Some(_)) => e.push(
            format!("{mp}.rawArgs"),
            "cannot be set together with moduleName; set exactly one",
        ),
        (None, None) => e.push(
            format!("{mp}.moduleName"),
            "is required unless rawArgs (load and unload) is set",
        ),
        _ => {}
    }
    if let Some(n) = module_name
        && let Some(ch) = n
            .chars()
            .find(|ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.')))
    {
        e.push(
            format!("{mp}.moduleName"),
            format!("{n:?} is not a kernel module name: it contains {ch:?}"),
        );
    }
    if let Some(raw) = &m.raw_args {
        // Without moduleName these are the whole command lines, so both are needed (upstream:
        // "load and unload rawArgs must be set when moduleName is unset"); `args` only adds to
        // modprobe's, so either may be missing.
        raw_args(e, &format!("{mp}.rawArgs"), raw);
    }
    if let Err(r) = absolute_clean(&m.dir_name) {
        e.push(format!("{mp}.dirName"), r);
    }
    if let Some(fw) = &m.firmware_path
        && let Err(r) = absolute_clean(fw)
    {
        e.push(format!("{mp}.firmwarePath"), r);
    }
    let order = &m.modules_loading_order;
    if !order.is_empty() {
        let field = format!("{mp}.modulesLoadingOrder");
        let mut seen = HashSet::new();
        if let Some(dup) = order.iter().find(|x| !seen.insert(x.as_str())) {
            e.push(field.clone(), format!("lists {dup:?} more than once"));
        }
        if seen.len() < 2 {
            e.push(
                field.clone(),
                "must list at least 2 distinct modules (the module and what it depends on)",
            );
        }
        match module_name {
            Some(n) if order[0] == n => {}
            Some(n) => e.push(
                field,
                format!("must start with moduleName {n:?}, starts with {:?}", order[0]),
            ),
            None => e.push(field, "needs moduleName, which must be its first entry"),
        }
    }
    if let Some(v) = &c.version
        && let Err(err) = labels::label_value(v)
    {
        e.push(format!("{at}.version"), format!("is used as a node label value: {err}"));
    }
    let container_in_tree = in_tree_fields(
        e,
        at,
        c.in_tree_modules_to_remove.is_some(),
        c.in_tree_module_to_remove.is_some(),
    );
    if let Some(img) = c.container_image.as_deref().filter(|i| !i.is_empty()) {
        image(e, &format!("{at}.containerImage"), Template::Image, img);
    }
    if let Some(b) = &c.build {
        build(e, &format!("{at}.build"), b);
    }
    if let Some(s) = &c.sign {
        sign(e, &format!("{at}.sign"), s, &m.dir_name);
    }
    if c.kernel_mappings.is_empty() {
        e.push(
            format!("{at}.kernelMappings"),
            "at least one kernel mapping is required",
        );
    }
    let container_has_image = c.container_image.as_deref().is_some_and(|i| !i.is_empty());
    for (i, km) in c.kernel_mappings.iter().enumerate() {
        let at_m = format!("{at}.kernelMappings[{i}]");
        let literal = km.literal.as_deref().filter(|s| !s.is_empty());
        let regexp = km.regexp.as_deref().filter(|s| !s.is_empty());
        match (literal, regexp) {
            (Some(_), Some(_)) => e.push(at_m.clone(), "exactly one of literal and regexp must be set, both are"),
            (None, None) => e.push(
                at_m.clone(),
                "exactly one of literal and regexp must be set, neither is",
            ),
            _ => {}
        }
        if let Some(p) = regexp
            && let Err(err) = GoRegex::new(p)
        {
            e.push(
                format!("{at_m}.regexp"),
                format!("{p:?} is not a valid regular expression: {err}"),
            );
        }
        let mapping_in_tree = in_tree_fields(
            e,
            &at_m,
            km.in_tree_modules_to_remove.is_some(),
            km.in_tree_module_to_remove.is_some(),
        );
        if let (Some(outer), Some(inner)) = (container_in_tree, mapping_in_tree)
            && outer != inner
        {
            e.push(
                at_m.clone(),
                format!("uses {inner} while {at} uses {outer}; use inTreeModulesToRemove in both"),
            );
        }
        match km.container_image.as_deref().filter(|s| !s.is_empty()) {
            Some(img) => image(e, &format!("{at_m}.containerImage"), Template::Image, img),
            None if !container_has_image => e.push(
                format!("{at_m}.containerImage"),
                format!("is required when {at}.containerImage is not set"),
            ),
            None => {}
        }
        if let Some(b) = &km.build {
            build(e, &format!("{at_m}.build"), b);
        }
        if let Some(s) = &km.sign {
            sign(e, &format!("{at_m}.sign"), s, &m.dir_name);
        }
    }
}

fn raw_args(e: &mut Errors, at: &str, args: &ModprobeArgs) {
    if args.load.is_empty() {
        e.push(format!("{at}.load"), "must not be empty");
    }
    if args.unload.is_empty() {
        e.push(format!("{at}.unload"), "must not be empty");
    }
}

/// Which of the two in-tree fields a container or mapping uses (upstream refuses both at once);
/// `None` when neither.
fn in_tree_fields(e: &mut Errors, at: &str, list: bool, single: bool) -> Option<&'static str> {
    match (list, single) {
        (true, true) => {
            e.push(
                format!("{at}.inTreeModuleToRemove"),
                "cannot be set together with inTreeModulesToRemove; keep only inTreeModulesToRemove",
            );
            None
        }
        (true, false) => Some("inTreeModulesToRemove"),
        (false, true) => Some("inTreeModuleToRemove"),
        (false, false) => None,
    }
}

/// Warns about variables `text` uses that its kind of template does not get (they expand to
/// nothing, as upstream); refuses text that is not valid envsubst syntax.
fn template(e: &mut Errors, field: &str, kind: Template, text: &str) -> bool {
    match unknown_references(kind, text) {
        Ok(unknown) => {
            for name in unknown {
                let known = kind.variables().join(", ");
                e.warn(
                    field,
                    format!("{text:?} uses ${{{name}}}, which is not defined here and expands to nothing; known variables are {known}"),
                );
            }
            true
        }
        Err(err) => {
            e.push(field, format!("{text:?}: {err}"));
            false
        }
    }
}

fn image(e: &mut Errors, field: &str, kind: Template, img: &str) {
    if !template(e, field, kind, img) {
        return;
    }
    if let Err(r) = check_reference(img) {
        e.push(field, format!("{img:?} is not a valid image reference: it {r}"));
        return;
    }
    if !ImageRef::parse(img).has_tag_or_digest() {
        e.push(
            field,
            format!(
                "{img:?} must carry a tag or a digest (repo:tag or repo@sha256:...); a bare name would float on :latest"
            ),
        );
    }
}

fn build(e: &mut Errors, at: &str, b: &Build) {
    match &b.dockerfile_config_map {
        None => e.push(format!("{at}.dockerfileConfigMap"), "is required"),
        Some(r) if r.name.is_empty() => e.push(format!("{at}.dockerfileConfigMap.name"), "must not be empty"),
        Some(_) => {}
    }
    for (i, a) in b.build_args.iter().enumerate() {
        if a.name.is_empty() {
            e.push(format!("{at}.buildArgs[{i}].name"), "must not be empty");
        }
    }
    for (i, s) in b.secrets.iter().enumerate() {
        if let Err(r) = labels::check_dns_subdomain(&s.name) {
            e.push(
                format!("{at}.secrets[{i}].name"),
                format!("{:?} is not a valid Secret name: it {r}", s.name),
            );
        }
    }
}

fn sign(e: &mut Errors, at: &str, s: &Sign, dir_name: &str) {
    for (field, secret) in [("keySecret", &s.key_secret), ("certSecret", &s.cert_secret)] {
        match secret {
            None => e.push(format!("{at}.{field}"), "is required"),
            Some(r) if r.name.is_empty() => e.push(format!("{at}.{field}.name"), "must not be empty"),
            Some(_) => {}
        }
    }
    if let Some(u) = s.unsigned_image.as_deref().filter(|u| !u.is_empty()) {
        image(e, &format!("{at}.unsignedImage"), Template::Sign, u);
    }
    if s.files_to_sign.is_empty() {
        e.push(format!("{at}.filesToSign"), "must list at least one module file");
    }
    let dir = dir_name.trim_end_matches('/');
    for (i, f) in s.files_to_sign.iter().enumerate() {
        let field = format!("{at}.filesToSign[{i}]");
        if !template(e, &field, Template::Sign, f) {
            continue;
        }
        if let Err(r) = absolute_clean(f) {
            e.push(field, r);
        } else if !f.starts_with(&format!("{dir}/")) {
            e.push(
                field,
                format!("{f:?} must lie under dirName {dir_name:?}, where the worker looks for modules"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::{KernelMapping, ModprobeSpec, ModuleLoaderSpec};
    use k8s_openapi::api::core::v1::LocalObjectReference;

    fn module(name: &str, ns: &str) -> Module {
        let mut m = Module::new(
            name,
            ModuleSpec {
                module_loader: Some(ModuleLoaderSpec {
                    container: ModuleLoaderContainerSpec {
                        modprobe: ModprobeSpec {
                            module_name: Some("kmm_ci_a".into()),
                            ..Default::default()
                        },
                        kernel_mappings: vec![KernelMapping {
                            regexp: Some("^.+$".into()),
                            container_image: Some("registry.example/kmm_ci_a:${KERNEL_FULL_VERSION}".into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                    service_account_name: None,
                }),
                selector: [("kubernetes.io/arch".to_owned(), "amd64".to_owned())].into(),
                ..Default::default()
            },
        );
        m.metadata.namespace = Some(ns.into());
        m
    }

    fn container(m: &mut Module) -> &mut ModuleLoaderContainerSpec {
        &mut m.spec.module_loader.as_mut().unwrap().container
    }

    fn only_error(m: &Module) -> FieldError {
        let errs = validate_module(m).unwrap_err();
        assert_eq!(errs.errors.len(), 1, "{errs}");
        errs.errors[0].clone()
    }

    const C: &str = "spec.moduleLoader.container";

    #[test]
    fn device_plugin_volumes_and_mounts() {
        use crate::module::{DevicePluginContainerSpec, DevicePluginSpec};
        use k8s_openapi::api::core::v1::{Volume, VolumeMount};
        let vol = |n: &str| Volume {
            name: n.into(),
            ..Default::default()
        };
        let mnt = |n: &str, p: &str| VolumeMount {
            name: n.into(),
            mount_path: p.into(),
            ..Default::default()
        };
        let with = |volumes: Vec<Volume>, mounts: Vec<VolumeMount>, init: Vec<VolumeMount>| {
            let mut m = module("a", "ns");
            m.spec.device_plugin = Some(DevicePluginSpec {
                container: DevicePluginContainerSpec {
                    image: "registry.example/plugin:1".into(),
                    volume_mounts: mounts,
                    ..Default::default()
                },
                init_container: Some(DevicePluginContainerSpec {
                    image: "registry.example/init:1".into(),
                    volume_mounts: init,
                    ..Default::default()
                }),
                volumes,
                ..Default::default()
            });
            m
        };
        const DP: &str = "spec.devicePlugin";
        // Its own volumes, and the operator's socket volume in the init container, are fine.
        validate_module(&with(
            vec![vol("conf")],
            vec![mnt("conf", "/etc/plugin")],
            vec![mnt("kubelet-device-plugins", "/sockets"), mnt("conf", "/etc/plugin")],
        ))
        .unwrap();
        let cases = [
            (
                with(vec![vol("kubelet-device-plugins")], vec![], vec![]),
                format!("{DP}.volumes[0].name"),
                "reserved",
            ),
            (
                with(vec![vol("conf"), vol("conf")], vec![], vec![]),
                format!("{DP}.volumes[1].name"),
                "used by another volume",
            ),
            (
                with(vec![], vec![mnt("conf", "/etc/plugin")], vec![]),
                format!("{DP}.container.volumeMounts[0].name"),
                "no volume \"conf\"",
            ),
            (
                with(
                    vec![vol("host")],
                    vec![mnt("host", "/var/lib/kubelet/device-plugins/")],
                    vec![],
                ),
                format!("{DP}.container.volumeMounts[0].mountPath"),
                "already mounts /var/lib/kubelet/device-plugins",
            ),
            (
                with(vec![vol("a"), vol("b")], vec![], vec![mnt("a", "/x"), mnt("b", "/x/")]),
                format!("{DP}.initContainer.volumeMounts[1].mountPath"),
                "mounted twice",
            ),
        ];
        for (m, field, reason) in cases {
            let err = only_error(&m);
            assert_eq!(err.field, field, "{err}");
            assert!(err.reason.contains(reason), "{err}");
        }
    }

    #[test]
    fn a_plain_module_is_valid() {
        validate_module(&module("kmm-ci-a", "kmm-tests")).unwrap();
    }

    #[test]
    fn literal_xor_regexp() {
        let mut m = module("a", "ns");
        container(&mut m).kernel_mappings[0].literal = Some("6.1.0".into());
        let err = only_error(&m);
        assert_eq!(err.field, format!("{C}.kernelMappings[0]"));
        assert_eq!(err.reason, "exactly one of literal and regexp must be set, both are");
        container(&mut m).kernel_mappings[0].literal = Some(String::new());
        container(&mut m).kernel_mappings[0].regexp = Some(String::new());
        assert!(only_error(&m).reason.ends_with("neither is"));
    }

    #[test]
    fn regexp_must_compile() {
        let mut m = module("a", "ns");
        container(&mut m).kernel_mappings[0].regexp = Some("^(6.1".into());
        let err = only_error(&m);
        assert_eq!(err.field, format!("{C}.kernelMappings[0].regexp"));
        assert!(
            err.reason.starts_with("\"^(6.1\" is not a valid regular expression: "),
            "{}",
            err.reason
        );
        assert!(!err.reason.contains('\n'));
    }

    #[test]
    fn image_needs_a_tag_or_digest_and_known_variables() {
        let mut m = module("a", "ns");
        container(&mut m).kernel_mappings[0].container_image = Some("registry.example/kmm_ci_a".into());
        let err = only_error(&m);
        assert_eq!(err.field, format!("{C}.kernelMappings[0].containerImage"));
        assert!(err.reason.contains("must carry a tag or a digest"), "{}", err.reason);

        // Unknown variables expand to nothing, as upstream: a warning, not a refusal.
        container(&mut m).kernel_mappings[0].container_image = Some("r/m:${KERNEL_FULL}".into());
        let warnings = validate_module(&m).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].field, format!("{C}.kernelMappings[0].containerImage"));
        assert!(
            warnings[0]
                .reason
                .contains("uses ${KERNEL_FULL}, which is not defined here")
        );
        // Sign templates do not get the Module's variables (upstream's getRelevantSign).
        container(&mut m).kernel_mappings[0].container_image = Some("r/m:${MOD_NAME}".into());
        assert!(validate_module(&m).unwrap().is_empty());
        container(&mut m).sign = Some(Sign {
            key_secret: Some(LocalObjectReference { name: "k".into() }),
            cert_secret: Some(LocalObjectReference { name: "c".into() }),
            files_to_sign: vec!["/opt/lib/modules/${KERNEL_FULL_VERSION}/${MOD_NAME}.ko".into()],
            ..Default::default()
        });
        let warnings = validate_module(&m).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].field, format!("{C}.sign.filesToSign[0]"));
        container(&mut m).sign = None;

        container(&mut m).kernel_mappings[0].container_image =
            Some("r/m@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into());
        validate_module(&m).unwrap();

        container(&mut m).kernel_mappings[0].container_image = None;
        let err = only_error(&m);
        assert_eq!(err.reason, format!("is required when {C}.containerImage is not set"));
        container(&mut m).container_image = Some("r/default:${KERNEL_XYZ}".into());
        validate_module(&m).unwrap();
        container(&mut m).container_image = Some("r/default".into());
        assert_eq!(only_error(&m).field, format!("{C}.containerImage"));
    }

    #[test]
    fn module_name_xor_raw_args() {
        let mut m = module("a", "ns");
        container(&mut m).modprobe.raw_args = Some(ModprobeArgs {
            load: vec!["-v".into()],
            unload: vec![],
        });
        let errs = validate_module(&m).unwrap_err();
        assert_eq!(
            errs.find(&format!("{C}.modprobe.rawArgs")).unwrap().reason,
            "cannot be set together with moduleName; set exactly one"
        );
        assert_eq!(
            errs.find(&format!("{C}.modprobe.rawArgs.unload")).unwrap().reason,
            "must not be empty"
        );

        container(&mut m).modprobe.module_name = None;
        container(&mut m).modprobe.raw_args = None;
        assert_eq!(only_error(&m).field, format!("{C}.modprobe.moduleName"));

        container(&mut m).modprobe.raw_args = Some(ModprobeArgs {
            load: vec!["kmm_ci_a".into()],
            unload: vec!["-r".into(), "kmm_ci_a".into()],
        });
        validate_module(&m).unwrap();
    }

    #[test]
    fn modules_loading_order() {
        let mut m = module("a", "ns");
        let field = format!("{C}.modprobe.modulesLoadingOrder");
        container(&mut m).modprobe.modules_loading_order = vec!["kmm_ci_a".into()];
        assert_eq!(
            only_error(&m),
            FieldError {
                field: field.clone(),
                reason: "must list at least 2 distinct modules (the module and what it depends on)".into()
            }
        );
        container(&mut m).modprobe.modules_loading_order = vec!["kmm_ci_b".into(), "kmm_ci_a".into()];
        assert_eq!(
            only_error(&m).reason,
            "must start with moduleName \"kmm_ci_a\", starts with \"kmm_ci_b\""
        );
        container(&mut m).modprobe.modules_loading_order = vec!["kmm_ci_a".into(), "kmm_ci_a".into()];
        let errs = validate_module(&m).unwrap_err();
        assert_eq!(errs.errors[0].reason, "lists \"kmm_ci_a\" more than once");
        container(&mut m).modprobe.modules_loading_order = vec!["kmm_ci_a".into(), "kmm_ci_b".into()];
        validate_module(&m).unwrap();
    }

    #[test]
    fn files_to_sign_lie_under_dir_name() {
        let mut m = module("a", "ns");
        let s = Sign {
            key_secret: Some(LocalObjectReference { name: "key".into() }),
            cert_secret: Some(LocalObjectReference { name: "cert".into() }),
            files_to_sign: vec![
                "/opt/lib/modules/${KERNEL_FULL_VERSION}/kmm_ci_a.ko".into(),
                "/usr/lib/modules/x.ko".into(),
                "/opt/../etc/shadow".into(),
                "/optical/x.ko".into(),
            ],
            ..Default::default()
        };
        container(&mut m).kernel_mappings[0].sign = Some(s);
        let errs = validate_module(&m).unwrap_err();
        let at = format!("{C}.kernelMappings[0].sign.filesToSign");
        assert_eq!(errs.errors.len(), 3, "{errs}");
        assert_eq!(errs.errors[0].field, format!("{at}[1]"));
        assert_eq!(
            errs.errors[0].reason,
            "\"/usr/lib/modules/x.ko\" must lie under dirName \"/opt\", where the worker looks for modules"
        );
        assert_eq!(
            errs.errors[1],
            FieldError {
                field: format!("{at}[2]"),
                reason: "\"/opt/../etc/shadow\" must not contain '..'".into()
            }
        );
        assert_eq!(errs.errors[2].field, format!("{at}[3]"));

        container(&mut m).modprobe.dir_name = "/usr/lib/".into();
        let errs = validate_module(&m).unwrap_err();
        assert_eq!(errs.errors[0].field, format!("{at}[0]"));
    }

    #[test]
    fn sign_and_build_need_their_references() {
        let mut m = module("a", "ns");
        container(&mut m).sign = Some(Sign {
            files_to_sign: vec![],
            ..Default::default()
        });
        container(&mut m).build = Some(Build::default());
        let errs = validate_module(&m).unwrap_err();
        let fields: Vec<_> = errs.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                format!("{C}.build.dockerfileConfigMap"),
                format!("{C}.sign.keySecret"),
                format!("{C}.sign.certSecret"),
                format!("{C}.sign.filesToSign"),
            ]
        );
    }

    #[test]
    fn version_is_a_label_value_and_cannot_be_added_or_removed() {
        let old = module("a", "ns");
        let mut new = old.clone();
        container(&mut new).version = Some("v2".into());
        let errs = validate_module_update(&old, &new).unwrap_err();
        assert_eq!(
            errs.errors,
            vec![FieldError {
                field: format!("{C}.version"),
                reason: "cannot be added on update; recreate the Module to switch between versioned and unversioned"
                    .into()
            }]
        );
        assert!(
            validate_module_update(&new, &old).unwrap_err().errors[0]
                .reason
                .starts_with("cannot be removed")
        );
        let mut newer = new.clone();
        container(&mut newer).version = Some("v3".into());
        validate_module_update(&new, &newer).unwrap();

        container(&mut newer).version = Some("v 3".into());
        assert!(
            only_error(&newer)
                .reason
                .starts_with("is used as a node label value: label value \"v 3\"")
        );
    }

    #[test]
    fn name_and_namespace_fit_in_41_characters_always() {
        // Upstream's limit, versioned or not: the longest node label KMM derives from them
        // (the ordered-upgrade ones) must fit, and every shorter one then fits too.
        let m = module(&"m".repeat(25), &"n".repeat(16));
        validate_module(&m).unwrap();
        let mut versioned = m.clone();
        container(&mut versioned).version = Some("1".into());
        validate_module(&versioned).unwrap();
        for long in [module(&"m".repeat(26), &"n".repeat(16)), {
            let mut v = module(&"m".repeat(26), &"n".repeat(16));
            container(&mut v).version = Some("1".into());
            v
        }] {
            let err = only_error(&long);
            assert_eq!(err.field, "metadata.name");
            assert!(
                err.reason.contains("combined length of 42 characters; the limit is 41"),
                "{}",
                err.reason
            );
        }
    }

    #[test]
    fn bad_selector_keys_are_named() {
        let mut m = module("a", "ns");
        m.spec.selector.insert("bad key".into(), "x".into());
        let err = only_error(&m);
        assert_eq!(err.field, "spec.selector[\"bad key\"]");
    }

    #[test]
    fn kernel_versions() {
        check_kernel_version("6.1.0-28-amd64").unwrap();
        check_kernel_version("5.14.0-284.25.1.el9_2.x86_64").unwrap();
        assert_eq!(check_kernel_version("").unwrap_err(), "is required");
        assert!(check_kernel_version("6.1.0 28").unwrap_err().contains("' '"));
        assert!(
            check_kernel_version("latest")
                .unwrap_err()
                .contains("does not start with a version number")
        );
    }
}
