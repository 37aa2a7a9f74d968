//! Validating admission webhooks (AdmissionReview v1) on the validation of `shared-api`, so the
//! webhooks, the offline `validate` commands and the controllers' conditions say the same.
//!
//! | path | object | rule |
//! | --- | --- | --- |
//! | [`MODULE_PATH`] | Module, CREATE and UPDATE | spec rules; version cannot be added or removed |
//! | [`MCM_PATH`] | ManagedClusterModule, CREATE and UPDATE | spec rules; spokeNamespace is immutable |
//! | [`PREFLIGHT_PATH`] | PreflightValidation, CREATE and UPDATE | kernelVersion is a kernel version |
//! | [`NAMESPACE_PATH`] | Namespace, DELETE | refused while the namespace holds Modules |
//!
//! Updates that leave the spec unchanged (finalizers, labels, an object being deleted) are
//! allowed, with the spec's problems as warnings: the webhook judges what a user asks for, and
//! must never keep a controller from releasing an object that predates a rule.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::api::{Api, ListParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde::de::DeserializeOwned;
use shared_api::mcm::ManagedClusterModule;
use shared_api::module::Module;
use shared_api::preflight::PreflightValidation;
use shared_api::validation::{self, ValidationErrors, Warnings};

/// Module webhook path (upstream KMM's).
pub const MODULE_PATH: &str = "/validate-kmm-sigs-x-k8s-io-v1beta1-module";
/// ManagedClusterModule webhook path (upstream KMM-hub's).
pub const MCM_PATH: &str = "/validate-hub-kmm-sigs-x-k8s-io-v1beta1-managedclustermodule";
/// PreflightValidation webhook path (upstream KMM's).
pub const PREFLIGHT_PATH: &str = "/validate-kmm-sigs-x-k8s-io-v1beta2-preflightvalidation";
/// Namespace deletion webhook path (upstream KMM's).
pub const NAMESPACE_PATH: &str = "/validate--v1-namespace";

/// The hub's webhooks: ManagedClusterModule.
pub fn hub_routes() -> Router {
    Router::new().route(MCM_PATH, post(|body: Bytes| async move { respond(&body, review_mcm) }))
}

/// The spoke's webhooks: Module, PreflightValidation, and Namespace deletion (which lists the
/// namespace's Modules with `client`, so the spoke needs `list` on Modules).
pub fn spoke_routes(client: kube::Client) -> Router {
    Router::new()
        .route(
            MODULE_PATH,
            post(|body: Bytes| async move { respond(&body, review_module) }),
        )
        .route(
            PREFLIGHT_PATH,
            post(|body: Bytes| async move { respond(&body, review_preflight) }),
        )
        .route(NAMESPACE_PATH, post(namespace_handler))
        .with_state(Arc::new(client))
}

type Request = AdmissionRequest<DynamicObject>;

/// Parses the review, decides, and answers with the review's response (HTTP 200), or 400 when
/// the body is not an AdmissionReview.
fn respond(body: &[u8], decide: fn(&Request) -> AdmissionResponse) -> Response {
    match parse(body) {
        Ok(req) => reply(decide(&req)),
        Err(reason) => (StatusCode::BAD_REQUEST, reason).into_response(),
    }
}

fn parse(body: &[u8]) -> Result<Request, String> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| format!("the body is not an AdmissionReview: {e}"))?;
    review
        .try_into()
        .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| e.to_string())
}

fn reply(resp: AdmissionResponse) -> Response {
    axum::Json(resp.into_review()).into_response()
}

fn typed<K: DeserializeOwned>(obj: &DynamicObject, kind: &str) -> Result<K, String> {
    serde_json::to_value(obj)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("cannot read the {kind}: {e}"))
}

/// A refusal as controller-runtime words it (403 Forbidden), so kubectl prints
/// `Error from server (Forbidden): ... denied the request: <reason>`.
fn denied(req: &Request, reason: impl ToString) -> AdmissionResponse {
    let mut resp = AdmissionResponse::from(req).deny("");
    resp.result = kube::core::Status::failure(&reason.to_string(), "Forbidden").with_code(403);
    resp
}

/// An allowed response carrying `outcome`'s warnings, or its errors as warnings (for updates
/// that cannot be refused: an unchanged spec, an object being deleted).
fn with_warnings(mut resp: AdmissionResponse, outcome: Result<Warnings, ValidationErrors>) -> AdmissionResponse {
    let list = match outcome {
        Ok(w) => w,
        Err(errs) => errs.errors,
    };
    if !list.is_empty() {
        resp.warnings = Some(list.iter().map(|e| e.to_string()).collect());
    }
    resp
}

/// The common shape of the object webhooks: create validates the object; update validates the
/// transition unless the spec is unchanged; the status subresource and other operations pass.
fn review_object<K: DeserializeOwned>(
    req: &Request,
    kind: &str,
    create: fn(&K) -> Result<Warnings, ValidationErrors>,
    update: fn(&K, &K) -> Result<Warnings, ValidationErrors>,
) -> AdmissionResponse {
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return AdmissionResponse::from(req);
    }
    let outcome = match (&req.operation, &req.object, &req.old_object) {
        (Operation::Create, Some(new), _) => typed::<K>(new, kind).map(|new| create(&new)),
        (Operation::Update, Some(new), Some(old)) => {
            let unchanged = new.data.get("spec") == old.data.get("spec");
            let being_deleted = new.metadata.deletion_timestamp.is_some();
            match (typed::<K>(old, kind), typed::<K>(new, kind)) {
                (Ok(old), Ok(new)) if unchanged || being_deleted => {
                    return with_warnings(AdmissionResponse::from(req), update(&old, &new));
                }
                (Ok(old), Ok(new)) => Ok(update(&old, &new)),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        (Operation::Create | Operation::Update, _, _) => Err(format!("the request carries no {kind}")),
        _ => return AdmissionResponse::from(req),
    };
    match outcome {
        Ok(Ok(warnings)) => with_warnings(AdmissionResponse::from(req), Ok(warnings)),
        Ok(Err(errs)) => denied(req, errs),
        Err(reason) => denied(req, reason),
    }
}

/// Decides a Module review.
pub fn review_module(req: &Request) -> AdmissionResponse {
    review_object::<Module>(
        req,
        "Module",
        validation::validate_module,
        validation::validate_module_update,
    )
}

/// Decides a ManagedClusterModule review.
pub fn review_mcm(req: &Request) -> AdmissionResponse {
    review_object::<ManagedClusterModule>(
        req,
        "ManagedClusterModule",
        validation::validate_mcm,
        validation::validate_mcm_update,
    )
}

/// Decides a PreflightValidation review.
pub fn review_preflight(req: &Request) -> AdmissionResponse {
    // Both served versions share the spec, so the v1beta2 type reads either.
    review_object::<PreflightValidation>(
        req,
        "PreflightValidation",
        |new| validation::validate_preflight(new.metadata.name.as_deref().unwrap_or_default(), &new.spec),
        |_, new| validation::validate_preflight(new.metadata.name.as_deref().unwrap_or_default(), &new.spec),
    )
}

/// Decides a Namespace review given the names of the Modules in that namespace.
pub fn review_namespace(req: &Request, modules: &[String]) -> AdmissionResponse {
    if req.operation != Operation::Delete || modules.is_empty() {
        return AdmissionResponse::from(req);
    }
    denied(
        req,
        format!(
            "namespace {} still holds Modules ({}); delete them first, so that their kernel modules are unloaded from the nodes",
            req.name,
            modules.join(", ")
        ),
    )
}

async fn namespace_handler(State(client): State<Arc<kube::Client>>, body: Bytes) -> Response {
    let req = match parse(&body) {
        Ok(r) => r,
        Err(reason) => return (StatusCode::BAD_REQUEST, reason).into_response(),
    };
    if req.operation != Operation::Delete || req.name.is_empty() {
        return reply(AdmissionResponse::from(&req));
    }
    let api: Api<Module> = Api::namespaced(client.as_ref().clone(), &req.name);
    match api.list_metadata(&ListParams::default()).await {
        Ok(list) => {
            let mut names: Vec<String> = list.items.into_iter().filter_map(|m| m.metadata.name).collect();
            names.sort();
            reply(review_namespace(&req, &names))
        }
        Err(e) => {
            // A 500 lets the webhook's failurePolicy decide, instead of guessing here.
            tracing::warn!(namespace = %req.name, error = %e, "listing Modules for a namespace deletion");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("listing the Modules of namespace {}: {e}", req.name),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use tower::ServiceExt as _;

    fn module(name: &str, version: Option<&str>, image: &str) -> Value {
        let mut container = json!({
            "modprobe": {"moduleName": "kmm_ci_a"},
            "kernelMappings": [{"regexp": "^.+$", "containerImage": image}]
        });
        if let Some(v) = version {
            container["version"] = json!(v);
        }
        json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
            "kind": "Module",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"selector": {"a": "b"}, "moduleLoader": {"container": container}}
        })
    }

    fn review(op: &str, kind: (&str, &str, &str), object: Value, old: Value) -> Value {
        let (group, version, k) = kind;
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "0b7d2f9e-1",
                "kind": {"group": group, "version": version, "kind": k},
                "resource": {"group": group, "version": version, "resource": format!("{}s", k.to_lowercase())},
                "name": object["metadata"]["name"].as_str().or(old["metadata"]["name"].as_str()).unwrap_or(""),
                "namespace": object["metadata"]["namespace"],
                "operation": op,
                "userInfo": {"username": "alice"},
                "object": object,
                "oldObject": old,
                "dryRun": false
            }
        })
    }

    const MODULE: (&str, &str, &str) = ("kmm.sigs.x-k8s.io", "v1beta1", "Module");
    const MCM: (&str, &str, &str) = ("hub.kmm.sigs.x-k8s.io", "v1beta1", "ManagedClusterModule");
    const PV: (&str, &str, &str) = ("kmm.sigs.x-k8s.io", "v1beta2", "PreflightValidation");

    /// Posts `body` to `path` of `router`; returns the HTTP status and the JSON answer.
    async fn post_to(router: Router, path: &str, body: &Value) -> (StatusCode, Value) {
        let req = axum::http::Request::post(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap();
        let resp = router.oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let v =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, v)
    }

    fn client() -> kube::Client {
        // Never contacted by these tests: only the namespace route's DELETE path lists Modules.
        let cfg = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        kube::Client::try_from(cfg).unwrap()
    }

    fn allowed(v: &Value) -> bool {
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1", "{v}");
        assert_eq!(v["kind"], "AdmissionReview", "{v}");
        assert_eq!(v["response"]["uid"], "0b7d2f9e-1", "{v}");
        v["response"]["allowed"].as_bool().unwrap()
    }

    fn message(v: &Value) -> &str {
        v["response"]["status"]["message"].as_str().unwrap_or_default()
    }

    #[tokio::test]
    async fn module_create_is_validated_with_field_paths() {
        let good = module("a", None, "r/m:${KERNEL_FULL_VERSION}");
        let (status, v) = post_to(
            spoke_routes(client()),
            MODULE_PATH,
            &review("CREATE", MODULE, good, Value::Null),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(allowed(&v), "{v}");

        let bad = module("a", None, "r/untagged");
        let (_, v) = post_to(
            spoke_routes(client()),
            MODULE_PATH,
            &review("CREATE", MODULE, bad, Value::Null),
        )
        .await;
        assert!(!allowed(&v));
        assert!(
            message(&v).starts_with(
                "Module ns/a is invalid: spec.moduleLoader.container.kernelMappings[0].containerImage: \"r/untagged\""
            ),
            "{v}"
        );
        assert!(message(&v).contains("must carry a tag or a digest"), "{v}");
    }

    #[test]
    fn module_update_rules_apply_only_to_changed_specs() {
        let req = |op: &str, new: Value, old: Value| -> Request {
            let r: AdmissionReview<DynamicObject> = serde_json::from_value(review(op, MODULE, new, old)).unwrap();
            r.try_into().unwrap()
        };
        let old = module("a", None, "r/m:v1");
        let versioned = module("a", Some("v2"), "r/m:v1");
        let resp = review_module(&req("UPDATE", versioned.clone(), old.clone()));
        assert!(!resp.allowed);
        assert!(
            resp.result
                .message
                .contains("spec.moduleLoader.container.version: cannot be added on update"),
            "{}",
            resp.result.message
        );
        let resp = review_module(&req("UPDATE", old.clone(), versioned.clone()));
        assert!(
            resp.result.message.contains("cannot be removed"),
            "{}",
            resp.result.message
        );
        let mut v3 = versioned.clone();
        v3["spec"]["moduleLoader"]["container"]["version"] = json!("v3");
        assert!(review_module(&req("UPDATE", v3, versioned)).allowed);

        // An invalid Module that predates the webhook can still get its finalizer removed.
        let invalid = module("a", None, "r/untagged");
        let mut releasing = invalid.clone();
        releasing["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        let resp = review_module(&req("UPDATE", releasing, invalid.clone()));
        assert!(resp.allowed);
        assert!(resp.warnings.unwrap()[0].contains("must carry a tag or a digest"));
        let mut labelled = invalid.clone();
        labelled["metadata"]["labels"] = json!({"x": "y"});
        assert!(review_module(&req("UPDATE", labelled, invalid.clone())).allowed);
        // ...but a changed spec must be valid.
        let mut changed = invalid.clone();
        changed["spec"]["selector"] = json!({"c": "d"});
        assert!(!review_module(&req("UPDATE", changed, invalid.clone())).allowed);

        assert!(review_module(&req("DELETE", Value::Null, invalid.clone())).allowed);
        let mut status = req("UPDATE", invalid.clone(), module("a", None, "r/m:v1"));
        status.sub_resource = Some("status".into());
        assert!(review_module(&status).allowed);
    }

    fn mcm(spoke_ns: &str, image: &str) -> Value {
        let m = module("x", None, image);
        json!({
            "apiVersion": "hub.kmm.sigs.x-k8s.io/v1beta1",
            "kind": "ManagedClusterModule",
            "metadata": {"name": "gpu"},
            "spec": {"moduleSpec": m["spec"], "spokeNamespace": spoke_ns, "selector": {"env": "prod"}}
        })
    }

    #[tokio::test]
    async fn mcm_create_and_spoke_namespace_is_immutable() {
        let (_, v) = post_to(
            hub_routes(),
            MCM_PATH,
            &review("CREATE", MCM, mcm("kmm", "r/m:1"), Value::Null),
        )
        .await;
        assert!(allowed(&v), "{v}");
        let (_, v) = post_to(
            hub_routes(),
            MCM_PATH,
            &review("CREATE", MCM, mcm("Bad_NS", "r/m:1"), Value::Null),
        )
        .await;
        assert!(!allowed(&v));
        assert!(
            message(&v).starts_with("ManagedClusterModule gpu is invalid: spec.spokeNamespace: \"Bad_NS\""),
            "{v}"
        );
        let (_, v) = post_to(
            hub_routes(),
            MCM_PATH,
            &review("UPDATE", MCM, mcm("other", "r/m:1"), mcm("kmm", "r/m:1")),
        )
        .await;
        assert!(!allowed(&v));
        assert!(message(&v).contains("spec.spokeNamespace: cannot be changed"), "{v}");
        let (_, v) = post_to(
            hub_routes(),
            MCM_PATH,
            &review("UPDATE", MCM, mcm("kmm", "r/m:2"), mcm("kmm", "r/m:1")),
        )
        .await;
        assert!(allowed(&v), "{v}");
        // The hub serves only its own webhook.
        let (status, _) = post_to(hub_routes(), MODULE_PATH, &json!({})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn preflight_kernel_version_is_checked() {
        let pv = |k: &str| {
            json!({
                "apiVersion": "kmm.sigs.x-k8s.io/v1beta2",
                "kind": "PreflightValidation",
                "metadata": {"name": "pv"},
                "spec": {"kernelVersion": k}
            })
        };
        let (_, v) = post_to(
            spoke_routes(client()),
            PREFLIGHT_PATH,
            &review("CREATE", PV, pv("6.1.0-28-amd64"), Value::Null),
        )
        .await;
        assert!(allowed(&v), "{v}");
        let (_, v) = post_to(
            spoke_routes(client()),
            PREFLIGHT_PATH,
            &review("CREATE", PV, pv("latest"), Value::Null),
        )
        .await;
        assert!(!allowed(&v));
        assert!(
            message(&v).starts_with("PreflightValidation pv is invalid: spec.kernelVersion: \"latest\""),
            "{v}"
        );
    }

    #[test]
    fn namespace_deletion_is_refused_while_modules_remain() {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpu"}});
        let r: AdmissionReview<DynamicObject> =
            serde_json::from_value(review("DELETE", ("", "v1", "Namespace"), Value::Null, ns)).unwrap();
        let req: Request = r.try_into().unwrap();
        assert_eq!(req.name, "gpu");
        assert!(review_namespace(&req, &[]).allowed);
        let resp = review_namespace(&req, &["a".into(), "b".into()]);
        assert!(!resp.allowed);
        assert_eq!((resp.result.code, resp.result.reason.as_str()), (403, "Forbidden"));
        assert_eq!(
            resp.result.message,
            "namespace gpu still holds Modules (a, b); delete them first, so that their kernel modules are unloaded from the nodes"
        );
    }

    #[tokio::test]
    async fn namespace_create_passes_without_asking_the_api_server() {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpu"}});
        let (_, v) = post_to(
            spoke_routes(client()),
            NAMESPACE_PATH,
            &review("CREATE", ("", "v1", "Namespace"), ns, Value::Null),
        )
        .await;
        assert!(allowed(&v), "{v}");
    }

    #[tokio::test]
    async fn a_body_that_is_not_a_review_is_a_bad_request() {
        let (status, v) = post_to(spoke_routes(client()), MODULE_PATH, &json!({"hello": 1})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        let (status, _) = post_to(hub_routes(), MCM_PATH, &json!([1])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
