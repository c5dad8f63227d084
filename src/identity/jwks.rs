//! Fetching and caching an issuer's signing keys.
//!
//! Only URLs from config are fetched (HTTPS; `http://` only to a loopback address behind
//! `identity.dangerous_allow_http_loopback_issuers`), redirects only to the same host, responses
//! capped in size and time. The cache honours `Cache-Control: max-age` clamped into the issuer's
//! bounds; a token naming an unknown `kid` triggers at most one refetch per interval; when the
//! issuer is unreachable the last good keys stay in use.
use super::issuer::{IssuerConfig, KeySource};
use crate::metrics::Metrics;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, RwLock};

/// Why keys could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No key with this `kid` (after the allowed refetch).
    #[error("no key {kid:?} for {alg:?} in the issuer's JWKS")]
    UnknownKey {
        /// The token's `kid`.
        kid: String,
        /// The token's algorithm.
        alg: Algorithm,
    },
    /// The issuer could not be reached and no keys are cached.
    #[error("issuer keys unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone)]
struct Key {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

fn family_of(alg: Algorithm) -> Option<Family> {
    use Algorithm::*;
    match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(Family::Rsa),
        ES256 => Some(Family::EcP256),
        ES384 => Some(Family::EcP384),
        EdDSA => Some(Family::Ed25519),
        _ => None,
    }
}

struct Cached {
    keys: Vec<Key>,
    fresh_until: Instant,
}

/// One issuer's key cache.
pub struct KeyCache {
    cfg: Arc<IssuerConfig>,
    client: reqwest::Client,
    allow_http_loopback: bool,
    metrics: Arc<Metrics>,
    cached: RwLock<Option<Cached>>,
    /// Serialises fetches; holds the time of the last unknown-`kid` refetch.
    fetch: Mutex<Option<Instant>>,
}

/// Checks a configured URL: HTTPS, or `http://` to a loopback address when allowed.
pub fn check_url(url: &str, allow_http_loopback: bool) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match u.scheme() {
        "https" => Ok(u),
        "http" if allow_http_loopback => {
            let loopback = match u.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                _ => false,
            };
            if loopback {
                Ok(u)
            } else {
                Err(format!("{url:?}: http:// is allowed only to a loopback IP address"))
            }
        }
        "http" => Err(format!(
            "{url:?}: keys are fetched over HTTPS only (identity.dangerous_allow_http_loopback_issuers allows http://127.0.0.1 for tests)"
        )),
        s => Err(format!("{url:?}: unsupported scheme {s:?}")),
    }
}

fn parse_jwks(doc: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_slice(doc).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if let Some(k) = to_key(jwk) {
            keys.push(k);
        }
    }
    if keys.is_empty() {
        return Err("JWKS has no usable asymmetric key".into());
    }
    Ok(keys)
}

fn to_key(jwk: &Jwk) -> Option<Key> {
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Family::EcP256,
            EllipticCurve::P384 => Family::EcP384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Family::Ed25519
        }
        // symmetric ("oct") keys are never used to verify platform tokens
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        family,
        key,
    })
}

/// An error with its sources, so the operator sees why (e.g. the refused redirect).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn max_age(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let cc = headers.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    cc.split(',')
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|v| v.trim().parse().ok())
}

impl KeyCache {
    /// A cache for `cfg`; loads static keys at once.
    pub fn new(
        cfg: Arc<IssuerConfig>,
        allow_http_loopback: bool,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let timeout = Duration::from_secs(cfg.fetch_timeout_secs);
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .https_only(!allow_http_loopback)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                // same origin only: scheme, host and port (another port on the same host is
                // another server)
                let same_origin = attempt
                    .previous()
                    .first()
                    .map(|first| first.origin() == attempt.url().origin())
                    .unwrap_or(false);
                if attempt.previous().len() > 3 {
                    attempt.error("too many redirects")
                } else if same_origin {
                    attempt.follow()
                } else {
                    attempt.error("redirect to another host refused")
                }
            }));
        if let Some(ca) = &cfg.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder = builder.tls_certs_only([cert]);
        }
        let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        let cached = match &cfg.keys {
            KeySource::Static(doc) => Some(Cached {
                keys: parse_jwks(doc.as_bytes())?,
                // static keys never go stale
                fresh_until: Instant::now()
                    .checked_add(Duration::from_secs(100 * 365 * 86_400))
                    .unwrap_or_else(Instant::now),
            }),
            KeySource::Discovery(u) | KeySource::Jwks(u) => {
                check_url(u, allow_http_loopback)?;
                None
            }
        };
        Ok(Self {
            cfg,
            client,
            allow_http_loopback,
            metrics,
            cached: RwLock::new(cached),
            fetch: Mutex::new(None),
        })
    }

    async fn get_capped(&self, url: &reqwest::Url) -> Result<(Vec<u8>, Option<u64>), String> {
        let mut resp = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        let cap = self.cfg.max_response_bytes;
        if resp.content_length().is_some_and(|n| n as usize > cap) {
            return Err(format!("GET {url}: response larger than {cap} bytes"));
        }
        let age = max_age(resp.headers());
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
            if body.len() + chunk.len() > cap {
                return Err(format!("GET {url}: response larger than {cap} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, age))
    }

    async fn fetch_keys(&self) -> Result<(Vec<Key>, Option<u64>), String> {
        let jwks_url = match &self.cfg.keys {
            KeySource::Static(_) => return Err("static keys are never fetched".into()),
            KeySource::Jwks(u) => check_url(u, self.allow_http_loopback)?,
            KeySource::Discovery(u) => {
                let durl = check_url(u, self.allow_http_loopback)?;
                let (doc, _) = self.get_capped(&durl).await?;
                let v: serde_json::Value = serde_json::from_slice(&doc)
                    .map_err(|e| format!("discovery document is not JSON: {e}"))?;
                // OIDC Discovery §4.3: the document's issuer must be the one we expect.
                if v.get("issuer").and_then(|i| i.as_str()) != Some(self.cfg.issuer.as_str()) {
                    return Err("discovery document names a different issuer".into());
                }
                let j = v
                    .get("jwks_uri")
                    .and_then(|j| j.as_str())
                    .ok_or("discovery document has no jwks_uri")?;
                let jurl = check_url(j, self.allow_http_loopback)?;
                if jurl.origin() != durl.origin() {
                    return Err(format!(
                        "jwks_uri {j:?} is on another host than the discovery document"
                    ));
                }
                jurl
            }
        };
        let (doc, age) = self.get_capped(&jwks_url).await?;
        Ok((parse_jwks(&doc)?, age))
    }

    /// Refetches now; on failure the cached keys stay and are retried after `cache_min_secs`.
    async fn refresh(&self) -> Result<(), String> {
        let issuer = self.cfg.name.as_str();
        match self.fetch_keys().await {
            Ok((keys, age)) => {
                let ttl = age
                    .unwrap_or(self.cfg.cache_max_secs)
                    .clamp(self.cfg.cache_min_secs, self.cfg.cache_max_secs);
                *self.cached.write().await = Some(Cached {
                    keys,
                    fresh_until: Instant::now() + Duration::from_secs(ttl),
                });
                self.metrics.jwks_fetch(issuer, true);
                tracing::debug!(issuer, ttl, "issuer keys fetched");
                Ok(())
            }
            Err(e) => {
                self.metrics.jwks_fetch(issuer, false);
                tracing::warn!(issuer, error = %e, "issuer key fetch failed; keeping the last good keys");
                if let Some(c) = self.cached.write().await.as_mut() {
                    c.fresh_until = Instant::now() + Duration::from_secs(self.cfg.cache_min_secs);
                }
                Err(e)
            }
        }
    }

    fn find(keys: &[Key], kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let family = family_of(alg)?;
        let candidates: Vec<&Key> = keys.iter().filter(|k| k.family == family).collect();
        match kid {
            // `kid` is only a lookup key into the configured issuer's set
            Some(kid) => candidates
                .into_iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .map(|k| k.key.clone()),
            // no kid: only unambiguous when the set has one key of this type
            None if candidates.len() == 1 => Some(candidates[0].key.clone()),
            None => None,
        }
    }

    /// The key for (`kid`, `alg`), fetching as the cache rules allow.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, KeyError> {
        let unknown = || KeyError::UnknownKey {
            kid: kid.unwrap_or("").to_string(),
            alg,
        };
        {
            let c = self.cached.read().await;
            if let Some(c) = c.as_ref() {
                if Instant::now() < c.fresh_until {
                    if let Some(k) = Self::find(&c.keys, kid, alg) {
                        return Ok(k);
                    }
                }
            }
        }
        if matches!(self.cfg.keys, KeySource::Static(_)) {
            return Err(unknown());
        }
        let mut last_unknown = self.fetch.lock().await;
        // Another task may have refreshed while we waited.
        let (stale, have_key, have_any) = {
            let c = self.cached.read().await;
            match c.as_ref() {
                Some(c) => (
                    Instant::now() >= c.fresh_until,
                    Self::find(&c.keys, kid, alg),
                    true,
                ),
                None => (true, None, false),
            }
        };
        if let (false, Some(k)) = (stale, &have_key) {
            return Ok(k.clone());
        }
        let interval = Duration::from_secs(self.cfg.unknown_kid_refetch_secs);
        let may_refetch = stale || last_unknown.is_none_or(|t| t.elapsed() >= interval);
        if may_refetch {
            if !stale {
                *last_unknown = Some(Instant::now());
            }
            let result = self.refresh().await;
            if let Err(e) = result {
                if !have_any {
                    return Err(KeyError::Unavailable(e));
                }
            }
        }
        let c = self.cached.read().await;
        c.as_ref()
            .and_then(|c| Self::find(&c.keys, kid, alg))
            .ok_or_else(unknown)
    }
}
