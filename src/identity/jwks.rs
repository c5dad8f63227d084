//! Fetching and caching an issuer's signing keys.
//!
//! Only URLs from config are fetched (HTTPS; `http://` only to a loopback address behind
//! `identity.dangerous_allow_http_loopback_issuers`), redirects only to the same host, responses
//! capped in size and time. A background task per issuer ([`KeyCache::refresher`]) fetches at
//! start and again when the keys go stale (`Cache-Control: max-age` clamped into the issuer's
//! bounds), retrying after `cache_min_secs` on failure, and publishes the keys; requests only
//! read what is published and never wait for a scheduled refresh. A request that finds no key
//! (unknown `kid`, or no keys yet) may trigger one fetch, but fetches are single-flight (one in
//! flight per issuer; the others wait for its result) and negatively cached: at most one
//! request-triggered fetch per `unknown_kid_refetch_secs`, whatever the outcome. So anonymous
//! traffic never multiplies issuer requests, with cached keys or without. When the issuer is
//! unreachable the last good keys stay in use. Freshness is read from the injected clock.
use super::issuer::{IssuerConfig, KeySource};
use super::setup_error::{JwksError, SetupError, UrlError};
use crate::clock::Clock;
use crate::metrics::Metrics;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Mutex;

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

/// Keys as published to the verifier.
struct Published {
    keys: Vec<Key>,
    /// Refresh due at (ms, injected clock).
    fresh_until: u64,
}

/// The single-flight fetch state (held across a fetch).
#[derive(Default)]
struct FetchState {
    /// Bumped by every completed fetch, so a waiter knows one happened while it waited.
    generation: u64,
    /// Last request-triggered fetch (ms): the negative cache.
    last_triggered: Option<u64>,
    /// Last failure (ms) and its message; a scheduled retry waits `cache_min_secs` after it.
    last_failure: Option<(u64, String)>,
}

/// One issuer's key cache.
pub struct KeyCache {
    cfg: Arc<IssuerConfig>,
    client: reqwest::Client,
    allow_http_loopback: bool,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    published: std::sync::RwLock<Option<Arc<Published>>>,
    fetch: Mutex<FetchState>,
}

/// Checks a configured URL: HTTPS, or `http://` to a loopback address when allowed.
pub fn check_url(url: &str, allow_http_loopback: bool) -> Result<reqwest::Url, UrlError> {
    let u = reqwest::Url::parse(url).map_err(|e| UrlError::Malformed {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
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
                Err(UrlError::HttpNotLoopback(url.to_string()))
            }
        }
        "http" => Err(UrlError::HttpRefused(url.to_string())),
        s => Err(UrlError::Scheme {
            url: url.to_string(),
            scheme: s.to_string(),
        }),
    }
}

fn parse_jwks(doc: &[u8]) -> Result<Vec<Key>, JwksError> {
    let set: JwkSet = serde_json::from_slice(doc).map_err(JwksError::Json)?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if let Some(k) = to_key(jwk) {
            keys.push(k);
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey);
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

/// An error with its sources, so the operator sees why (the refused redirect, the certificate
/// and what is wrong with it).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    super::issuer_tls::error_chain(e)
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
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SetupError> {
        let timeout = Duration::from_secs(cfg.fetch_timeout_secs);
        let tls = super::issuer_tls::client_config(cfg.ca_file.as_deref())?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .https_only(!allow_http_loopback)
            .tls_backend_preconfigured(tls)
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
            }))
            .build()
            .map_err(SetupError::HttpClient)?;
        let published = match &cfg.keys {
            KeySource::Static(doc) => Some(Arc::new(Published {
                keys: parse_jwks(doc.as_bytes())?,
                // static keys never go stale
                fresh_until: u64::MAX,
            })),
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
            clock,
            published: std::sync::RwLock::new(published),
            fetch: Mutex::new(FetchState::default()),
        })
    }

    fn now(&self) -> u64 {
        self.clock.now_millis()
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
            KeySource::Jwks(u) => {
                check_url(u, self.allow_http_loopback).map_err(|e| e.to_string())?
            }
            KeySource::Discovery(u) => {
                let durl = check_url(u, self.allow_http_loopback).map_err(|e| e.to_string())?;
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
                let jurl = check_url(j, self.allow_http_loopback).map_err(|e| e.to_string())?;
                if jurl.origin() != durl.origin() {
                    return Err(format!(
                        "jwks_uri {j:?} is on another host than the discovery document"
                    ));
                }
                jurl
            }
        };
        let (doc, age) = self.get_capped(&jwks_url).await?;
        Ok((parse_jwks(&doc).map_err(|e| e.to_string())?, age))
    }

    /// One fetch; the caller holds the fetch lock. Publishes on success; on failure the
    /// published keys (if any) stay.
    async fn refresh_locked(&self, st: &mut FetchState) -> Result<(), String> {
        let issuer = self.cfg.name.as_str();
        let result = self.fetch_keys().await;
        st.generation += 1;
        match result {
            Ok((keys, age)) => {
                let ttl = age
                    .unwrap_or(self.cfg.cache_max_secs)
                    .clamp(self.cfg.cache_min_secs, self.cfg.cache_max_secs);
                let n = keys.len();
                if let Ok(mut p) = self.published.write() {
                    *p = Some(Arc::new(Published {
                        keys,
                        fresh_until: self.now().saturating_add(ttl.saturating_mul(1000)),
                    }));
                }
                st.last_failure = None;
                self.metrics.jwks_fetch(issuer, true);
                tracing::debug!(issuer, ttl, keys = n, "issuer keys fetched");
                Ok(())
            }
            Err(e) => {
                self.metrics.jwks_fetch(issuer, false);
                let have = self.published.read().map(|p| p.is_some()).unwrap_or(false);
                if have {
                    tracing::warn!(issuer, error = %e, "issuer key fetch failed; keeping the last good keys");
                } else {
                    tracing::warn!(issuer, error = %e, "issuer key fetch failed and no keys were ever fetched: this issuer's tokens are refused until a fetch succeeds");
                }
                st.last_failure = Some((self.now(), e.clone()));
                Err(e)
            }
        }
    }

    /// How long until the next scheduled fetch (ms; 0 = now).
    async fn due_in(&self) -> u64 {
        if matches!(self.cfg.keys, KeySource::Static(_)) {
            return u64::MAX;
        }
        let st = self.fetch.lock().await;
        self.due_in_locked(&st)
    }

    /// The background task: fetches at start and whenever the keys go stale. Ends when the
    /// cache is dropped (a reload built new ones).
    pub async fn refresher(cache: Weak<KeyCache>) {
        loop {
            let wait = match cache.upgrade() {
                Some(c) => c.due_in().await,
                None => return,
            };
            if wait > 0 {
                // wake at least every 10 s to notice a dropped cache
                tokio::time::sleep(Duration::from_millis(wait.min(10_000))).await;
                continue;
            }
            let Some(c) = cache.upgrade() else { return };
            let mut st = c.fetch.lock().await;
            // a request-triggered fetch may have just run
            if c.due_in_locked(&st) == 0 {
                let _ = c.refresh_locked(&mut st).await;
            }
        }
    }

    fn due_in_locked(&self, st: &FetchState) -> u64 {
        let now = self.now();
        if let Some((at, _)) = &st.last_failure {
            return at
                .saturating_add(self.cfg.cache_min_secs.max(1) * 1000)
                .saturating_sub(now);
        }
        match self.published.read().ok().and_then(|p| p.clone()) {
            Some(p) => p.fresh_until.saturating_sub(now),
            None => 0,
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

    /// The published key for (`kid`, `alg`), if any. No I/O.
    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let p = self.published.read().ok()?.clone()?;
        Self::find(&p.keys, kid, alg)
    }

    /// The key for (`kid`, `alg`): the published one, or after the one request-triggered fetch
    /// the negative cache allows (single flight: concurrent callers wait for that fetch and
    /// use its result).
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, KeyError> {
        let unknown = || KeyError::UnknownKey {
            kid: kid.unwrap_or("").to_string(),
            alg,
        };
        if let Some(k) = self.lookup(kid, alg) {
            return Ok(k);
        }
        if matches!(self.cfg.keys, KeySource::Static(_)) {
            return Err(unknown());
        }
        let seen = self.fetch.try_lock().map(|st| st.generation).ok();
        let mut st = self.fetch.lock().await;
        let fetched_meanwhile = seen.is_none_or(|g| g != st.generation);
        if !fetched_meanwhile {
            let interval = self.cfg.unknown_kid_refetch_secs.max(1) * 1000;
            let now = self.now();
            if st
                .last_triggered
                .is_none_or(|t| now.saturating_sub(t) >= interval)
            {
                st.last_triggered = Some(now);
                let _ = self.refresh_locked(&mut st).await;
            }
        }
        if let Some(k) = self.lookup(kid, alg) {
            return Ok(k);
        }
        let have_any = self.published.read().map(|p| p.is_some()).unwrap_or(false);
        match (&st.last_failure, have_any) {
            (Some((_, e)), false) => Err(KeyError::Unavailable(e.clone())),
            (None, false) => Err(KeyError::Unavailable("no keys fetched yet".into())),
            _ => Err(unknown()),
        }
    }
}
