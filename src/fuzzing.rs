//! Entry points of the fuzz targets (`fuzz/`), one per kind of hostile input, so that the
//! libFuzzer targets and the corpus replay in `cargo test` (`tests/fuzz_corpus.rs`) call the
//! very same code. Each takes arbitrary bytes and must return without panicking, whatever
//! they are; none does I/O beyond what the code under test does on its own (config parsing may
//! try to read files the text names).
use crate::identity::core::{self, ClaimRules};
use serde_json::Value;
use std::path::Path;

/// A fuzz target: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// The targets, by name (the directory names under `fuzz/corpus/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("token", token),
    ("config", config),
    ("admission_review", admission_review),
    ("agent_template", agent_template),
    ("stored_record", stored_record),
];

const RULES: ClaimRules<'static> = ClaimRules {
    issuer: "https://token.actions.githubusercontent.com",
    audience: "https://keygate.test",
    allow_extra_audiences: false,
    leeway_secs: 30,
    max_age_secs: 600,
    max_lifetime_secs: 86_400,
    require_jti: true,
};

/// A platform token: parse, algorithm check, signature (against a fixed key: anything but a
/// forgery fails), claim checks at a fixed time, and a role's conditions on whatever parsed.
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(parsed) = core::parse(&text, crate::identity::MAX_TOKEN_BYTES) else {
        return;
    };
    let _ = core::check_algorithm(
        &parsed,
        &[
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::Algorithm::ES256,
        ],
    );
    let key = jsonwebtoken::DecodingKey::from_ec_components(
        "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
    );
    if let Ok(k) = key {
        let _ = core::verify_signature(&parsed, &k);
    }
    for now in [0, 1_800_000_000, core::MAX_NUMERIC_DATE, u64::MAX] {
        let _ = core::check_claims(&RULES, &parsed.claims, now);
    }
    let role: Result<crate::policy::Role, _> = role_for_fuzzing();
    if let Ok(r) = role {
        for p in [
            crate::policy::Platform::GithubActions,
            crate::policy::Platform::Generic,
        ] {
            let _ = r.check("gh", p, &parsed.claims);
        }
    }
}

fn role_for_fuzzing() -> Result<crate::policy::Role, String> {
    use crate::policy::{Matcher, Role, Scalar};
    let glob = |g: &str| Matcher::Glob { glob: g.into() };
    Ok(Role {
        name: "r".into(),
        issuer: "gh".into(),
        bound_subject: Some(glob("repo:acme/**")),
        claims: [
            (
                "repository_id".to_string(),
                Matcher::Exact(Scalar::Int(123)),
            ),
            ("ref".to_string(), glob("refs/heads/*")),
            (
                "/kubernetes.io/namespace".to_string(),
                Matcher::AnyOf(vec![Scalar::Str("prod".into()), Scalar::Bool(true)]),
            ),
        ]
        .into_iter()
        .collect(),
        scopes: vec![crate::policy::scope::Scope::parse("read:prod/**").map_err(|e| e.to_string())?],
        ttl_secs: 60,
        max_ttl_secs: 60,
        cap_at_token_expiry: false,
        allow_pull_request_target: false,
    })
}

/// The daemon's config file. Relative paths resolve under a directory that does not exist, so
/// nothing the text names is found; parsing must still end in a value or an error.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ =
        crate::config::Config::parse(Path::new("/nonexistent/keygate-fuzz/keygate.toml"), &text);
}

/// An `AdmissionReview` as the API server would post it to the injector.
pub fn admission_review(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let cfg = crate::injector::InjectorConfig {
        listen: "127.0.0.1:0".into(),
        cert_file: "/nonexistent".into(),
        key_file: "/nonexistent".into(),
        image: "keygate:fuzz".into(),
        keygate_addr: "https://keygate:8443".into(),
        ca_config_map: "keygate-ca".into(),
        audience: "https://keygate.test".into(),
        token_expiration_secs: 3600,
        native_sidecar: true,
        on_error: "deny".into(),
    };
    let _ = crate::injector::review(&body, &cfg);
    let mut allow = cfg;
    allow.on_error = "allow".into();
    allow.native_sidecar = false;
    let _ = crate::injector::review(&body, &allow);
}

/// An agent template (first line: secret fields as `path field value` triples separated by
/// tabs; the rest: the template).
pub fn agent_template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (head, template) = text.split_once('\n').unwrap_or(("", &text));
    let mut secrets = crate::agent::render::Secrets::new();
    for triple in head.split('\t').collect::<Vec<_>>().chunks(3) {
        if let [p, f, v] = triple {
            secrets
                .entry((*p).to_string())
                .or_default()
                .insert((*f).to_string(), (*v).to_string());
        }
    }
    let _ = crate::agent::render::check_template(template);
    let _ = crate::agent::render::render(template, &std::sync::Arc::new(secrets));
}

/// Bytes read back from the store or the audit log: every record type keygate decodes, and a
/// sealed secret version opened (integrity errors, never a panic).
pub fn stored_record(data: &[u8]) {
    use crate::secrets::model::{SecretMeta, VersionRecord};
    let _ = serde_json::from_slice::<crate::credential::lease::Lease>(data);
    let _ = serde_json::from_slice::<SecretMeta>(data);
    let _ = serde_json::from_slice::<crate::rotation::state::RotationState>(data);
    let _ = serde_json::from_slice::<crate::audit::record::Record>(data);
    let _ = crate::secrets::model::parse_version_key(data);
    let _ = crate::audit::record::split_seal(data);
    if let Ok(rec) = serde_json::from_slice::<VersionRecord>(data) {
        let kek =
            crate::secrets::envelope::Kek::from_bytes(&crate::sensitive::SecretBytes::new(vec![
                7;
                32
            ]));
        if let Ok(kek) = kek {
            let ring = crate::secrets::envelope::Keyring::single(kek);
            let _ = crate::secrets::envelope::open_version(&ring, "fuzz/path", 1, &rec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sealed version in the seed corpus opens with the target's key: the target reaches
    /// decryption, not only JSON decoding (and the seed is what this test prints).
    #[test]
    fn the_stored_record_seed_is_a_real_sealed_version() {
        use crate::secrets::envelope::{open_version, seal_version, Kek, Keyring};
        let kek = Kek::from_bytes(&crate::sensitive::SecretBytes::new(vec![7; 32])).unwrap();
        let ring = Keyring::single(kek);
        let mut fields = crate::sensitive::SecretFields::new();
        fields.insert(
            "password".into(),
            crate::sensitive::SecretBytes::new(b"hunter2".to_vec()),
        );
        let rec = seal_version(&ring, "fuzz/path", 1, &fields).unwrap();
        let seed = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/stored_record/seed-version"
        ))
        .unwrap_or_default();
        let stored: Result<crate::secrets::model::VersionRecord, _> = serde_json::from_slice(&seed);
        match stored {
            Ok(s) => assert!(open_version(&ring, "fuzz/path", 1, &s).is_ok()),
            Err(_) => panic!(
                "fuzz/corpus/stored_record/seed-version: write {}",
                serde_json::to_string(&rec).unwrap()
            ),
        }
        stored_record(&seed);
    }
}
