//! The Kubernetes injector: real AdmissionReview requests → the returned JSONPatch, applied
//! with a JSON-patch library, gives exactly the expected pod; and one round trip through the
//! real binary over HTTPS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use base64::Engine;
use keygate::agent::config::AgentConfig;
use keygate::injector::{review, InjectorConfig};
use serde_json::{json, Value};

fn cfg() -> InjectorConfig {
    InjectorConfig {
        listen: "127.0.0.1:0".into(),
        cert_file: "x".into(),
        key_file: "x".into(),
        image: "ghcr.io/keygate/keygate:0.1.0".into(),
        keygate_addr: "https://keygate.keygate.svc:8443".into(),
        ca_config_map: "keygate-ca".into(),
        audience: "https://keygate.example".into(),
        token_expiration_secs: 600,
        native_sidecar: true,
        on_error: "deny".into(),
    }
}

fn admission(pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": false
        }
    })
}

/// Runs the review; returns (response, patched pod).
fn mutate(pod: &Value, c: &InjectorConfig) -> (Value, Value) {
    let out = review(&admission(pod), c);
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(
        out["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    let mut patched = pod.clone();
    if let Some(p) = out["response"]["patch"].as_str() {
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        let ops: json_patch::Patch =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(p).unwrap())
                .unwrap();
        json_patch::patch(&mut patched, &ops).unwrap();
    }
    (out["response"].clone(), patched)
}

fn agent_config_of(container: &Value) -> (String, AgentConfig) {
    let v = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "KEYGATE_AGENT_CONFIG_B64")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    let text = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(&v)
            .unwrap(),
    )
    .unwrap();
    (v, AgentConfig::parse(&text).unwrap())
}

fn one_container_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-",
            "namespace": "shop",
            "annotations": {
                "keygate.dev/inject": "true",
                "keygate.dev/role": "shop-web",
                "keygate.dev/secret-db.json": "shop/db",
                "keygate.dev/secret-api.env": "shop/api",
                "keygate.dev/template-api.env": "{{ secret('shop/api') | dotenv }}"
            }
        },
        "spec": {
            "serviceAccountName": "web",
            "containers": [{"name": "web", "image": "shop/web:1.4", "ports": [{"containerPort": 8080}]}]
        }
    })
}

fn agent_container(name: &str, args: Value, env_value: &str, native: bool) -> Value {
    let mut c = json!({
        "name": name,
        "image": "ghcr.io/keygate/keygate:0.1.0",
        "args": args,
        "env": [{"name": "KEYGATE_AGENT_CONFIG_B64", "value": env_value}],
        "volumeMounts": [
            {"name": "keygate-secrets", "mountPath": "/keygate/secrets"},
            {"name": "keygate-token", "mountPath": "/var/run/secrets/keygate", "readOnly": true},
            {"name": "keygate-ca", "mountPath": "/keygate/ca", "readOnly": true}
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}
    });
    if native {
        c["restartPolicy"] = json!("Always");
    }
    c
}

fn keygate_volumes() -> Vec<Value> {
    vec![
        json!({"name": "keygate-secrets", "emptyDir": {"medium": "Memory"}}),
        json!({"name": "keygate-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "https://keygate.example", "expirationSeconds": 600, "path": "token"}}]}}),
        json!({"name": "keygate-ca", "configMap": {"name": "keygate-ca"}}),
    ]
}

#[test]
fn one_container_pod_gets_exactly_the_expected_spec() {
    let pod = one_container_pod();
    let (resp, patched) = mutate(&pod, &cfg());
    assert_eq!(resp["allowed"], true);
    let (env_value, agent) = agent_config_of(&patched["spec"]["initContainers"][0]);
    assert_eq!(agent.role, "shop-web");
    assert_eq!(agent.addr, "https://keygate.keygate.svc:8443");
    assert_eq!(
        agent.token_file.to_str().unwrap(),
        "/var/run/secrets/keygate/token"
    );
    let files: Vec<(&str, &str)> = agent
        .templates
        .iter()
        .map(|t| (t.destination.as_str(), t.contents.as_deref().unwrap()))
        .collect();
    assert_eq!(
        files,
        vec![
            ("api.env", "{{ secret('shop/api') | dotenv }}"),
            ("db.json", "{{ secret(\"shop/db\") | tojson }}"),
        ]
    );
    let mut expected = pod.clone();
    expected["metadata"]["annotations"]["keygate.dev/status"] = json!("injected");
    expected["spec"]["volumes"] = json!(keygate_volumes());
    expected["spec"]["initContainers"] = json!([
        agent_container(
            "keygate-init",
            json!(["agent", "--once"]),
            &env_value,
            false
        ),
        agent_container("keygate-agent", json!(["agent"]), &env_value, true),
    ]);
    expected["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "keygate-secrets", "mountPath": "/keygate/secrets", "readOnly": true}]);
    assert_eq!(patched, expected);

    // idempotent: the injected pod is left unchanged
    let (resp, again) = mutate(&patched, &cfg());
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
    assert_eq!(again, patched);
}

#[test]
fn several_containers_with_existing_volumes_and_inits_and_a_regular_sidecar() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "worker-0", "annotations": {
            "keygate.dev/inject": "true", "keygate.dev/role": "jobs",
            "keygate.dev/secret-queue.json": "jobs/queue",
            "keygate.dev/containers": "worker"
        }},
        "spec": {
            "volumes": [{"name": "data", "emptyDir": {}}],
            "initContainers": [{"name": "migrate", "image": "jobs/migrate:2"}],
            "containers": [
                {"name": "worker", "image": "jobs/worker:2", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "metrics", "image": "prom/statsd-exporter"}
            ]
        }
    });
    let mut c = cfg();
    c.native_sidecar = false;
    let (resp, patched) = mutate(&pod, &c);
    assert_eq!(resp["allowed"], true);
    let (env_value, _) = agent_config_of(&patched["spec"]["initContainers"][0]);
    let mut expected = pod.clone();
    expected["metadata"]["annotations"]["keygate.dev/status"] = json!("injected");
    let mut vols = vec![json!({"name": "data", "emptyDir": {}})];
    vols.extend(keygate_volumes());
    expected["spec"]["volumes"] = json!(vols);
    expected["spec"]["initContainers"] = json!([
        agent_container("keygate-init", json!(["agent", "--once"]), &env_value, false),
        {"name": "migrate", "image": "jobs/migrate:2"},
    ]);
    expected["spec"]["containers"] = json!([
        {"name": "worker", "image": "jobs/worker:2", "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "keygate-secrets", "mountPath": "/keygate/secrets", "readOnly": true}
        ]},
        {"name": "metrics", "image": "prom/statsd-exporter"},
        agent_container("keygate-agent", json!(["agent"]), &env_value, false),
    ]);
    assert_eq!(patched, expected);
}

#[test]
fn exec_mode_wraps_the_command() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "api", "annotations": {
            "keygate.dev/inject": "true", "keygate.dev/role": "api",
            "keygate.dev/env": "true",
            "keygate.dev/env-DB_PASSWORD": "api/db#password"
        }},
        "spec": {"containers": [{"name": "api", "image": "api:1", "command": ["/app/server"], "args": ["--port", "8080"],
            "env": [{"name": "MODE", "value": "prod"}]}]}
    });
    let (resp, patched) = mutate(&pod, &cfg());
    assert_eq!(resp["allowed"], true, "{resp}");
    let app = &patched["spec"]["containers"][0];
    assert_eq!(
        app["command"],
        json!([
            "/keygate/bin/keygate",
            "agent",
            "--exec",
            "--",
            "/app/server",
            "--port",
            "8080"
        ])
    );
    assert!(app.get("args").is_none());
    let (_, agent) = agent_config_of(app);
    assert_eq!(agent.exec.unwrap().env["DB_PASSWORD"], "api/db#password");
    assert_eq!(app["env"][0], json!({"name": "MODE", "value": "prod"}));
    let init = &patched["spec"]["initContainers"][0];
    assert_eq!(
        init["args"],
        json!(["agent", "--once", "--install-to", "/keygate/bin/keygate"])
    );
    assert_eq!(
        patched["spec"]["initContainers"].as_array().unwrap().len(),
        1,
        "no sidecar in exec mode"
    );
    let mounts: Vec<&str> = app["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        mounts,
        vec![
            "keygate-secrets",
            "keygate-bin",
            "keygate-token",
            "keygate-ca"
        ]
    );
}

#[test]
fn unannotated_pods_and_other_kinds_pass_and_bad_annotations_are_named() {
    let plain = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "x", "image": "x"}]}});
    let (resp, patched) = mutate(&plain, &cfg());
    assert_eq!(resp["allowed"], true);
    assert_eq!(patched, plain);

    let cases: Vec<(&str, &str, &str)> = vec![
        ("keygate.dev/role", "", "keygate.dev/role"),
        (
            "keygate.dev/secret-db.json",
            "../etc",
            "keygate.dev/secret-db.json",
        ),
        (
            "keygate.dev/template-other",
            "{{ x }}",
            "keygate.dev/template-other",
        ),
        (
            "keygate.dev/template-db.json",
            "{{ oops",
            "keygate.dev/template-db.json",
        ),
        ("keygate.dev/env", "yes", "keygate.dev/env"),
        ("keygate.dev/sercet-x", "a/b", "keygate.dev/sercet-x"),
        ("keygate.dev/containers", "nope", "keygate.dev/containers"),
    ];
    for (k, v, named) in cases {
        let mut pod = one_container_pod();
        pod["metadata"]["annotations"]["keygate.dev/secret-db.json"] = json!("shop/db");
        pod["metadata"]["annotations"][k] = json!(v);
        let (resp, patched) = mutate(&pod, &cfg());
        assert_eq!(resp["allowed"], false, "{k}={v}");
        assert_eq!(resp["status"]["code"], 400);
        let msg = resp["status"]["message"].as_str().unwrap();
        assert!(msg.contains(named), "{k}: {msg}");
        assert_eq!(patched, pod);
        // failurePolicy-style: allowed unchanged, with a warning
        let mut c = cfg();
        c.on_error = "allow".into();
        let (resp, patched) = mutate(&pod, &c);
        assert_eq!(resp["allowed"], true);
        assert!(resp["warnings"][0].as_str().unwrap().contains(named));
        assert_eq!(patched, pod);
    }
    // exec mode needs the container's command
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "annotations": {
        "keygate.dev/inject": "true", "keygate.dev/role": "r", "keygate.dev/env": "true",
        "keygate.dev/env-X": "a/b#c"}}, "spec": {"containers": [{"name": "a", "image": "a"}]}});
    let (resp, _) = mutate(&pod, &cfg());
    assert_eq!(resp["allowed"], false);
    assert!(resp["status"]["message"]
        .as_str()
        .unwrap()
        .contains("command"));
    // not a pod: allowed; garbage: refused
    let mut svc = admission(&plain);
    svc["request"]["kind"]["kind"] = json!("Service");
    assert_eq!(review(&svc, &cfg())["response"]["allowed"], true);
    assert_eq!(
        review(&json!({"x": 1}), &cfg())["response"]["allowed"],
        false
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_serves_the_webhook_over_https() {
    let env = common::TestEnv::new();
    let dir = &env.paths.dir;
    let cert = dir.join("injector.pem");
    let key = dir.join("injector-key.pem");
    keygate::devenv::issue_server_cert(dir, &["localhost", "127.0.0.1"], &cert, &key).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.join("injector.toml");
    std::fs::write(
        &conf,
        format!(
            "[injector]\nlisten = \"127.0.0.1:{port}\"\ncert_file = \"injector.pem\"\nkey_file = \"injector-key.pem\"\n\
             image = \"ghcr.io/keygate/keygate:0.1.0\"\nkeygate_addr = \"https://keygate.keygate.svc:8443\"\n\
             audience = \"https://keygate.example\"\n"
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(common::BIN)
        .args(["injector", "--config"])
        .arg(&conf)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([
            reqwest::Certificate::from_pem(&std::fs::read(&env.paths.ca).unwrap()).unwrap(),
        ])
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}/mutate");
    let mut resp = None;
    for _ in 0..100 {
        match client
            .post(&url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&admission(&one_container_pod())).unwrap())
            .send()
            .await
        {
            Ok(r) => {
                resp = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let resp = resp.expect("injector did not answer");
    assert_eq!(resp.status(), 200);
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["response"]["allowed"], true);
    assert_eq!(body["response"]["patchType"], "JSONPatch");
    // the same answer the pure function gives for the same settings
    assert_eq!(body, review(&admission(&one_container_pod()), &cfg()));
    // a bad config is refused with a clear message
    std::fs::write(&conf, "[injector]\nlisten = \"x\"\n").unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["injector", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing field"));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_documented_examples_parse() {
    let root = env!("CARGO_MANIFEST_DIR");
    let c = keygate::injector::server::load(std::path::Path::new(&format!(
        "{root}/config/injector.toml"
    )))
    .unwrap();
    assert!(c.native_sidecar);
    let a =
        AgentConfig::parse(&std::fs::read_to_string(format!("{root}/config/agent.toml")).unwrap())
            .unwrap();
    assert_eq!(a.templates.len(), 2);
    assert_eq!(a.exec.unwrap().env["DB_PASSWORD"], "shop/db#password");
}
