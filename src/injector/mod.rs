//! The Kubernetes mutating admission webhook: pods annotated `keygate.dev/inject: "true"` get
//! an init container (`agent --once`), the agent sidecar, an in-memory volume for the rendered
//! files (read-only in the app containers) and a projected service-account token with keygate's
//! audience. The decision is a pure function of the pod and the settings (`mutate`), served over
//! HTTPS by `server`.
pub mod server;

use crate::agent::config::{valid_file_name, AgentConfig, ExecConfig, TemplateConfig};
use crate::secrets::path::SecretPath;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Annotation prefix.
pub const PREFIX: &str = "keygate.dev/";
/// Set on injected pods (idempotency).
pub const STATUS: &str = "keygate.dev/status";

/// Injector settings (`[injector]` of its config file).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InjectorConfig {
    /// HTTPS listen address.
    pub listen: String,
    /// Serving certificate (the API server must trust its CA: `caBundle`).
    pub cert_file: std::path::PathBuf,
    /// Its key.
    pub key_file: std::path::PathBuf,
    /// The keygate image (it holds the agent).
    pub image: String,
    /// The daemon as pods reach it.
    pub keygate_addr: String,
    /// ConfigMap with `ca.pem`, the CA of the daemon's certificate.
    #[serde(default = "default_ca_map")]
    pub ca_config_map: String,
    /// Audience of the projected token (keygate's audience for the cluster's issuer).
    pub audience: String,
    /// Lifetime of the projected token (kubelet refreshes it at 80 %).
    #[serde(default = "default_token_exp")]
    pub token_expiration_secs: u64,
    /// Use native sidecars (an init container with `restartPolicy: Always`, Kubernetes 1.29+);
    /// false: a regular container.
    #[serde(default = "default_true")]
    pub native_sidecar: bool,
    /// A pod with bad annotations: `deny` (refused with the reason) or `allow` (unchanged).
    #[serde(default = "default_on_error")]
    pub on_error: String,
}

fn default_ca_map() -> String {
    "keygate-ca".into()
}
fn default_token_exp() -> u64 {
    600
}
fn default_true() -> bool {
    true
}
fn default_on_error() -> String {
    "deny".into()
}

const SECRETS_DIR: &str = "/keygate/secrets";
const BIN_DIR: &str = "/keygate/bin";
const TOKEN_DIR: &str = "/var/run/secrets/keygate";
const CA_DIR: &str = "/keygate/ca";

/// What a pod's annotations ask for.
#[derive(Debug)]
struct Request {
    role: String,
    files: BTreeMap<String, (String, Option<String>)>,
    env: BTreeMap<String, String>,
    exec: bool,
    containers: Option<Vec<String>>,
}

fn annotations(pod: &Value) -> BTreeMap<String, String> {
    pod.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn bad(annotation: &str, why: impl std::fmt::Display) -> String {
    format!("annotation {PREFIX}{annotation}: {why}")
}

fn parse(a: &BTreeMap<String, String>) -> Result<Request, String> {
    let role = a
        .get("keygate.dev/role")
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| {
            bad(
                "role",
                "is required (the keygate role to exchange the pod's token for)",
            )
        })?
        .clone();
    let mut files: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    let mut templates = BTreeMap::new();
    let mut env = BTreeMap::new();
    let mut exec = false;
    let mut containers = None;
    for (k, v) in a {
        let Some(key) = k.strip_prefix(PREFIX) else {
            continue;
        };
        if let Some(file) = key.strip_prefix("secret-") {
            if !valid_file_name(file) {
                return Err(bad(
                    key,
                    "the file name after secret- must be A-Z a-z 0-9 . _ -",
                ));
            }
            SecretPath::parse(v).map_err(|m| bad(key, m))?;
            files.insert(file.to_string(), (v.clone(), None));
        } else if let Some(file) = key.strip_prefix("template-") {
            templates.insert(file.to_string(), v.clone());
        } else if let Some(name) = key.strip_prefix("env-") {
            let (path, field) = v
                .split_once('#')
                .ok_or_else(|| bad(key, "expected PATH#FIELD"))?;
            SecretPath::parse(path).map_err(|m| bad(key, m))?;
            if field.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || name.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(bad(
                    key,
                    "expected env-NAME: PATH#FIELD with NAME a variable name",
                ));
            }
            env.insert(name.to_string(), v.clone());
        } else {
            match key {
                "inject" | "role" | "status" => {}
                "env" => {
                    exec = match v.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad(key, "must be \"true\" or \"false\"")),
                    }
                }
                "containers" => {
                    containers = Some(
                        v.split(',')
                            .map(|c| c.trim().to_string())
                            .filter(|c| !c.is_empty())
                            .collect(),
                    )
                }
                other => {
                    return Err(bad(
                        other,
                        "unknown keygate annotation (see docs/kubernetes.md)",
                    ))
                }
            }
        }
    }
    for (file, t) in templates {
        let Some(entry) = files.get_mut(&file) else {
            return Err(bad(
                &format!("template-{file}"),
                format!("needs {PREFIX}secret-{file} naming the secret it renders"),
            ));
        };
        crate::agent::render::check_template(&t)
            .map_err(|m| bad(&format!("template-{file}"), m))?;
        entry.1 = Some(t);
    }
    if exec && env.is_empty() {
        return Err(bad(
            "env",
            "exec mode needs at least one keygate.dev/env-NAME: PATH#FIELD",
        ));
    }
    if !exec && !env.is_empty() {
        return Err(bad(
            "env",
            "env-NAME annotations need keygate.dev/env: \"true\"",
        ));
    }
    if files.is_empty() && env.is_empty() {
        return Err(bad(
            "inject",
            "nothing to inject: add keygate.dev/secret-FILE: PATH",
        ));
    }
    Ok(Request {
        role,
        files,
        env,
        exec,
        containers,
    })
}

/// The agent configuration for a pod.
fn agent_config(cfg: &InjectorConfig, r: &Request) -> AgentConfig {
    AgentConfig {
        addr: cfg.keygate_addr.clone(),
        cacert: format!("{CA_DIR}/ca.pem").into(),
        role: r.role.clone(),
        token_file: format!("{TOKEN_DIR}/token").into(),
        output_dir: SECRETS_DIR.into(),
        health_listen: None,
        templates: r
            .files
            .iter()
            .map(|(file, (path, t))| TemplateConfig {
                destination: file.clone(),
                contents: Some(
                    t.clone()
                        .unwrap_or_else(|| format!("{{{{ secret({}) | tojson }}}}", json!(path))),
                ),
                source: None,
                mode: "0444".into(),
                uid: None,
                gid: None,
                on_change: None,
            })
            .collect(),
        exec: r.exec.then(|| ExecConfig {
            env: r.env.clone(),
            ..Default::default()
        }),
    }
}

fn escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

/// The JSONPatch for a pod: `Ok(None)` when the pod is not annotated or already injected.
pub fn patch_for(pod: &Value, cfg: &InjectorConfig) -> Result<Option<Vec<Value>>, String> {
    let a = annotations(pod);
    if a.get("keygate.dev/inject").map(String::as_str) != Some("true") {
        return Ok(None);
    }
    let spec = pod.get("spec").ok_or("the pod has no spec")?;
    let already = a.contains_key(STATUS)
        || spec
            .pointer("/initContainers")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c["name"] == "keygate-init"));
    if already {
        return Ok(None);
    }
    let r = parse(&a)?;
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .ok_or("the pod has no containers")?;
    if let Some(names) = &r.containers {
        for n in names {
            if !containers.iter().any(|c| c["name"] == n.as_str()) {
                return Err(bad("containers", format!("no container is named {n:?}")));
            }
        }
    }
    let agent = toml::to_string(&agent_config(cfg, &r)).map_err(|e| e.to_string())?;
    let agent_b64 = base64::engine::general_purpose::STANDARD.encode(agent.as_bytes());
    let mut ops = Vec::new();

    // volumes
    let mut volumes = vec![
        json!({"name": "keygate-secrets", "emptyDir": {"medium": "Memory"}}),
        json!({"name": "keygate-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": cfg.audience, "expirationSeconds": cfg.token_expiration_secs, "path": "token"}}]}}),
        json!({"name": "keygate-ca", "configMap": {"name": cfg.ca_config_map}}),
    ];
    if r.exec {
        volumes.push(json!({"name": "keygate-bin", "emptyDir": {"medium": "Memory"}}));
    }
    push_all(&mut ops, spec.get("volumes"), "/spec/volumes", volumes);

    let agent_mounts = json!([
        {"name": "keygate-secrets", "mountPath": SECRETS_DIR},
        {"name": "keygate-token", "mountPath": TOKEN_DIR, "readOnly": true},
        {"name": "keygate-ca", "mountPath": CA_DIR, "readOnly": true},
    ]);
    let env = json!([{"name": "KEYGATE_AGENT_CONFIG_B64", "value": agent_b64}]);
    let resources =
        json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}});
    let security = json!({"runAsNonRoot": true, "runAsUser": 65532, "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}});
    let mut init = json!({
        "name": "keygate-init", "image": cfg.image,
        "args": ["agent", "--once"],
        "env": env, "volumeMounts": agent_mounts, "resources": resources, "securityContext": security,
    });
    if r.exec {
        // the agent binary for exec mode, copied where the app containers can run it
        init["args"] = json!([
            "agent",
            "--once",
            "--install-to",
            format!("{BIN_DIR}/keygate")
        ]);
        if let Some(m) = init["volumeMounts"].as_array_mut() {
            m.push(json!({"name": "keygate-bin", "mountPath": BIN_DIR}));
        }
    }
    let sidecar = json!({
        "name": "keygate-agent", "image": cfg.image,
        "args": ["agent"],
        "env": env, "volumeMounts": agent_mounts, "resources": resources, "securityContext": security,
    });
    let mut inits = vec![init];
    let existing_inits = spec.get("initContainers");
    if r.exec {
        // exec mode: the app's own process runs under the agent, no sidecar needed
    } else if cfg.native_sidecar {
        let mut s = sidecar;
        s["restartPolicy"] = json!("Always");
        inits.push(s);
    } else {
        ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": sidecar}));
    }
    match existing_inits.and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            // ours run first, in order
            for (i, c) in inits.into_iter().enumerate() {
                ops.push(
                    json!({"op": "add", "path": format!("/spec/initContainers/{i}"), "value": c}),
                );
            }
        }
        _ => ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": inits})),
    }

    // app containers: the rendered files, read-only; exec mode wraps the command
    for (i, c) in containers.iter().enumerate() {
        let name = c["name"].as_str().unwrap_or("");
        if r.containers
            .as_ref()
            .is_some_and(|l| !l.iter().any(|n| n == name))
        {
            continue;
        }
        let mut mounts =
            vec![json!({"name": "keygate-secrets", "mountPath": SECRETS_DIR, "readOnly": true})];
        if r.exec {
            mounts.push(json!({"name": "keygate-bin", "mountPath": BIN_DIR, "readOnly": true}));
            mounts.push(json!({"name": "keygate-token", "mountPath": TOKEN_DIR, "readOnly": true}));
            mounts.push(json!({"name": "keygate-ca", "mountPath": CA_DIR, "readOnly": true}));
        }
        push_all(
            &mut ops,
            c.get("volumeMounts"),
            &format!("/spec/containers/{i}/volumeMounts"),
            mounts,
        );
        if r.exec {
            let Some(cmd) = c
                .get("command")
                .and_then(Value::as_array)
                .filter(|c| !c.is_empty())
            else {
                return Err(bad(
                    "env",
                    format!("container {name:?} sets no command; exec mode wraps the command, so the pod spec must name it"),
                ));
            };
            let mut wrapped = vec![
                json!(format!("{BIN_DIR}/keygate")),
                json!("agent"),
                json!("--exec"),
                json!("--"),
            ];
            wrapped.extend(cmd.iter().cloned());
            if let Some(args) = c.get("args").and_then(Value::as_array) {
                wrapped.extend(args.iter().cloned());
                ops.push(json!({"op": "remove", "path": format!("/spec/containers/{i}/args")}));
            }
            ops.push(json!({"op": "replace", "path": format!("/spec/containers/{i}/command"), "value": wrapped}));
            push_all(
                &mut ops,
                c.get("env"),
                &format!("/spec/containers/{i}/env"),
                vec![json!({"name": "KEYGATE_AGENT_CONFIG_B64", "value": agent_b64})],
            );
        }
    }
    // marks the pod so a second pass (reinvocation, retries) changes nothing
    if pod.pointer("/metadata/annotations").is_none() {
        ops.push(
            json!({"op": "add", "path": "/metadata/annotations", "value": {STATUS: "injected"}}),
        );
    } else {
        ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(STATUS)), "value": "injected"}));
    }
    Ok(Some(ops))
}

/// Adds `items` to the array at `path`, creating it when absent.
fn push_all(ops: &mut Vec<Value>, existing: Option<&Value>, path: &str, items: Vec<Value>) {
    if existing.and_then(Value::as_array).is_some() {
        for v in items {
            ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": v}));
        }
    } else {
        ops.push(json!({"op": "add", "path": path, "value": items}));
    }
}

/// Answers an `admission.k8s.io/v1` `AdmissionReview`.
pub fn review(body: &Value, cfg: &InjectorConfig) -> Value {
    let uid = body.pointer("/request/uid").cloned().unwrap_or(json!(""));
    let respond = |response: Value| {
        let mut r = response;
        r["uid"] = uid.clone();
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": r})
    };
    if body["kind"] != "AdmissionReview" || body.pointer("/request/object").is_none() {
        return respond(
            json!({"allowed": false, "status": {"code": 400, "message": "not an AdmissionReview with a request object"}}),
        );
    }
    let kind = body
        .pointer("/request/kind/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    if kind != "Pod" {
        return respond(json!({"allowed": true}));
    }
    let pod = &body["request"]["object"];
    match patch_for(pod, cfg) {
        Ok(None) => respond(json!({"allowed": true})),
        Ok(Some(ops)) => {
            let patch = base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(&ops).unwrap_or_default());
            respond(json!({"allowed": true, "patchType": "JSONPatch", "patch": patch}))
        }
        Err(m) if cfg.on_error == "allow" => {
            tracing::warn!(error = %m, "pod admitted unchanged: bad keygate annotations");
            respond(json!({"allowed": true, "warnings": [format!("keygate: not injected: {m}")]}))
        }
        Err(m) => respond(
            json!({"allowed": false, "status": {"code": 400, "message": format!("keygate: {m}")}}),
        ),
    }
}
