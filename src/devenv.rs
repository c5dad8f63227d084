//! `keygate dev`: one command to a working local system. Creates a directory with a CA, server
//! and admin certificates (rcgen), a KEK (mode 0600), a config and an `env.sh`; re-running reuses
//! everything already there.
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// Subject of the dev admin certificate.
pub const ADMIN_CN: &str = "keygate-admin";

/// Files of a dev directory.
#[derive(Debug, Clone)]
pub struct DevPaths {
    /// The directory.
    pub dir: PathBuf,
    /// CA certificate.
    pub ca: PathBuf,
    /// Admin client certificate.
    pub admin_cert: PathBuf,
    /// Admin client key.
    pub admin_key: PathBuf,
    /// Config file.
    pub config: PathBuf,
    /// Shell environment file.
    pub env_sh: PathBuf,
}

/// Listen addresses for the dev config.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// gRPC listen address.
    pub grpc_listen: String,
    /// HTTPS listen address.
    pub http_listen: String,
    /// Dev OIDC issuer listen address.
    pub issuer_listen: String,
    /// The Vault-compatible HTTP API's listen address (`None`: off).
    pub vault_listen: Option<String>,
}

impl Default for DevOptions {
    fn default() -> Self {
        Self {
            grpc_listen: "127.0.0.1:8443".into(),
            http_listen: "127.0.0.1:8444".into(),
            issuer_listen: "127.0.0.1:8445".into(),
            vault_listen: Some("127.0.0.1:8200".into()),
        }
    }
}

use crate::fsutil::write_private;

fn write_public(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn rc(e: rcgen::Error) -> String {
    format!("certificate generation failed: {e}")
}

fn ca_params() -> Result<CertificateParams, String> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    p.distinguished_name
        .push(DnType::CommonName, "keygate dev CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn issue(
    dir: &Path,
    cn: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    out_cert: &Path,
    out_key: &Path,
) -> Result<(), String> {
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).map_err(|e| e.to_string())?;
    let ca_key_pem = std::fs::read_to_string(dir.join("ca-key.pem")).map_err(|e| e.to_string())?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(rc)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(rc)?;
    let key = KeyPair::generate().map_err(rc)?;
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .map_err(rc)?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, &issuer).map_err(rc)?;
    write_public(out_cert, &cert.pem())?;
    write_private(out_key, &key.serialize_pem()).map_err(|e| e.to_string())
}

/// Issues a client certificate with common name `cn`, signed by the dev CA in `dir`.
pub fn issue_client_cert(
    dir: &Path,
    cn: &str,
    out_cert: &Path,
    out_key: &Path,
) -> Result<(), String> {
    issue(
        dir,
        cn,
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        out_cert,
        out_key,
    )
}

/// Issues a server certificate for `names` (DNS names or IPs), signed by the dev CA in `dir`.
pub fn issue_server_cert(
    dir: &Path,
    names: &[&str],
    out_cert: &Path,
    out_key: &Path,
) -> Result<(), String> {
    let cn = names.first().copied().unwrap_or("localhost");
    issue(
        dir,
        cn,
        names,
        ExtendedKeyUsagePurpose::ServerAuth,
        out_cert,
        out_key,
    )
}

/// Creates (or reuses) a dev directory. Existing files are never overwritten.
pub fn init(dir: &Path, opts: &DevOptions) -> Result<DevPaths, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let paths = DevPaths {
        ca: dir.join("ca.pem"),
        admin_cert: dir.join("admin.pem"),
        admin_key: dir.join("admin-key.pem"),
        config: dir.join("keygate.toml"),
        env_sh: dir.join("env.sh"),
        dir: dir.clone(),
    };
    if !paths.ca.exists() {
        let ca_key = KeyPair::generate().map_err(rc)?;
        let params = ca_params()?;
        let ca = params.self_signed(&ca_key).map_err(rc)?;
        write_private(&dir.join("ca-key.pem"), &ca_key.serialize_pem())
            .map_err(|e| e.to_string())?;
        let issuer = Issuer::from_params(&params, &ca_key);

        let server_key = KeyPair::generate().map_err(rc)?;
        let mut sp = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(rc)?;
        sp.distinguished_name.push(DnType::CommonName, "keygate");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = sp.signed_by(&server_key, &issuer).map_err(rc)?;
        write_public(&dir.join("server.pem"), &server.pem())?;
        write_private(&dir.join("server-key.pem"), &server_key.serialize_pem())
            .map_err(|e| e.to_string())?;
        write_public(&paths.ca, &ca.pem())?;
        issue_client_cert(&dir, ADMIN_CN, &paths.admin_cert, &paths.admin_key)?;
    }
    let kek = dir.join("kek");
    if !kek.exists() {
        crate::secrets::kek::generate_file(&kek).map_err(|e| e.to_string())?;
    }
    let dev_issuer = crate::devissuer::init(&dir, &opts.issuer_listen)?;
    if !paths.config.exists() {
        let http_port = opts.http_listen.rsplit(':').next().unwrap_or("8444");
        let config = format!(
            r#"# Written by `keygate dev`. See config/keygate.toml in the repository for every key.
[server]
grpc_listen = "{grpc}"
http_listen = "{http}"
node_id = "dev-1"

[tls]
cert_file = "server.pem"
key_file = "server-key.pem"
client_ca_file = "ca.pem"

[storage]
backend = "sled"
path = "data"

[kek]
file = "kek"

[admin]
subjects = ["CN={ADMIN_CN}"]

[log]
format = "text"

[identity]
url = "https://localhost:{http_port}"

# The local dev issuer `keygate dev` runs (discovery + JWKS on loopback).
[[issuers]]
name = "dev"
issuer = "{iss}"
ca_file = "ca.pem"
audience = "{aud}"

# `keygate exchange --role demo --token-file <(keygate dev token)`
[[roles]]
name = "demo"
issuer = "dev"
bound_subject = {{ glob = "repo:acme/app:**" }}
claims = {{ repository = "acme/app", ref = "refs/heads/main", event_name = "push" }}
scopes = ["read:demo/*", "list:demo/**"]
ttl_secs = 900

# `keygate admin rotate demo/rotating`, `keygate admin rotation status`
[[rotations]]
path = "demo/rotating"
every = "1h"
overlap = "10m"

[rotations.fields.password]
generator = "password"
length = 32
require = ["lower", "upper", "digit"]
{vault}"#,
            vault = match &opts.vault_listen {
                Some(v) => format!(
                    "\n# Vault clients (hvac, vault-action, …): VAULT_ADDR and VAULT_CACERT are in env.sh.\n[vault_api]\nlisten = \"{v}\"\nkv_mount = \"secret\"\n"
                ),
                None => String::new(),
            },
            grpc = opts.grpc_listen,
            http = opts.http_listen,
            iss = dev_issuer.issuer,
            aud = crate::devissuer::DEV_AUDIENCE,
        );
        write_public(&paths.config, &config)?;
    }
    let (grpc, vault) = crate::config::Config::load(&paths.config)
        .map(|c| (c.server.grpc_listen, c.vault_api.map(|v| v.listen)))
        .map_err(|e| e.to_string())?;
    write_env(&paths, grpc, vault)?;
    Ok(paths)
}

/// Writes `env.sh` for a daemon listening on `grpc` (and `vault`, the Vault-compatible API:
/// `VAULT_ADDR`, `VAULT_CACERT` for Vault clients).
pub fn write_env(
    paths: &DevPaths,
    grpc: std::net::SocketAddr,
    vault: Option<std::net::SocketAddr>,
) -> Result<(), String> {
    let mut env = format!(
        "# Source this file: . {env}\nexport KEYGATE_ADDR=https://{grpc}\nexport KEYGATE_CACERT={ca}\nexport KEYGATE_CLIENT_CERT={cert}\nexport KEYGATE_CLIENT_KEY={key}\n",
        env = paths.env_sh.display(),
        ca = paths.ca.display(),
        cert = paths.admin_cert.display(),
        key = paths.admin_key.display(),
    );
    if let Some(v) = vault {
        env.push_str(&format!(
            "export VAULT_ADDR=https://{v}\nexport VAULT_CACERT={ca}\n",
            ca = paths.ca.display()
        ));
    }
    write_public(&paths.env_sh, &env)
}
