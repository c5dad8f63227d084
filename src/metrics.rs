//! Prometheus metrics, served as text on `/metrics`.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Instant;

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcStatus {
    /// Full RPC name (`keygate.v1.Secrets/Get`) or HTTP path.
    pub rpc: String,
    /// gRPC status code name (`OK`, `NOT_FOUND`, …).
    pub code: String,
}

/// Label of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rpc {
    /// Full RPC name.
    pub rpc: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~1.6 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// Every metric keygate exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RpcStatus, Counter>,
    latency: Family<Rpc, Histogram, fn() -> Histogram>,
    /// Secrets stored (set at scrape time).
    pub store_secrets: Gauge,
    /// Keys in the store (set at scrape time).
    pub store_keys: Gauge,
    /// Store size on disk (set at scrape time).
    pub store_bytes: Gauge,
    /// Audit lines the optional second sink dropped since start (a counter, raised to the
    /// writer's count at scrape time).
    pub audit_sink_dropped: Counter,
    /// Config reloads by outcome.
    pub config_reloads: Family<Vec<(String, String)>, Counter>,
    /// Issuer key fetches by issuer and outcome.
    pub jwks_fetches: Family<Vec<(String, String)>, Counter>,
    /// Token exchanges by role and outcome (reason code or `ok`).
    pub exchanges: Family<Vec<(String, String)>, Counter>,
    /// gRPC listener events since start, by `event` (`refused_at_max_connections`,
    /// `handshake_failed`, `accept_out_of_resources`), set at scrape time.
    pub grpc_connection_events: Family<Vec<(String, String)>, Gauge>,
    /// Storage pool connections by `state` (`open`, `idle`, `max`), set at scrape time.
    pub storage_pool: Family<Vec<(String, String)>, Gauge>,
    /// Storage operations since start by `op` (`read`, `commit`), set at scrape time.
    pub storage_operations: Family<Vec<(String, String)>, Gauge>,
    /// Seconds the storage operations took in all, by `op`, set at scrape time.
    pub storage_operation_seconds:
        Family<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Milliseconds from a change's transaction to its delivery on this replica (last one).
    pub storage_change_lag_ms: Gauge,
    /// 1 while this replica leads.
    pub leader: Gauge,
    /// The leader term this replica holds (0 when it does not lead).
    pub leader_term: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keygate");
        let requests = Family::<RpcStatus, Counter>::default();
        let latency: Family<Rpc, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let store_secrets = Gauge::default();
        let store_keys = Gauge::default();
        let store_bytes = Gauge::default();
        let audit_sink_dropped = Counter::default();
        let grpc_connection_events = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register(
            "grpc_connection_events",
            "gRPC listener events since start (refused, failed handshakes, out of descriptors)",
            grpc_connection_events.clone(),
        );
        let storage_pool = Family::<Vec<(String, String)>, Gauge>::default();
        let storage_operations = Family::<Vec<(String, String)>, Gauge>::default();
        let storage_operation_seconds =
            Family::<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let storage_change_lag_ms = Gauge::default();
        let leader = Gauge::default();
        let leader_term = Gauge::default();
        registry.register(
            "storage_pool_connections",
            "Database pool connections by state (open, idle, max)",
            storage_pool.clone(),
        );
        registry.register(
            "storage_operations",
            "Database operations since start by op (read, commit)",
            storage_operations.clone(),
        );
        registry.register(
            "storage_operation_seconds",
            "Seconds the database operations took in all, by op (divide by the count for the mean)",
            storage_operation_seconds.clone(),
        );
        registry.register(
            "storage_change_lag_ms",
            "Milliseconds from a change's transaction to its delivery on this replica (last change)",
            storage_change_lag_ms.clone(),
        );
        registry.register("leader", "1 while this replica leads", leader.clone());
        registry.register(
            "leader_term",
            "The leader term this replica holds (0 when it does not lead)",
            leader_term.clone(),
        );
        let config_reloads = Family::<Vec<(String, String)>, Counter>::default();
        let jwks_fetches = Family::<Vec<(String, String)>, Counter>::default();
        let exchanges = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "jwks_fetches",
            "Issuer key fetches by issuer and outcome",
            jwks_fetches.clone(),
        );
        registry.register(
            "exchanges",
            "Token exchanges by role and outcome",
            exchanges.clone(),
        );
        registry.register(
            "requests",
            "Requests by RPC and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency by RPC",
            latency.clone(),
        );
        registry.register("store_secrets", "Secrets stored", store_secrets.clone());
        registry.register("store_keys", "Keys in the store", store_keys.clone());
        registry.register(
            "audit_sink_dropped",
            "Audit lines the optional second sink dropped since start",
            audit_sink_dropped.clone(),
        );
        registry.register(
            "store_disk_bytes",
            "Store size on disk",
            store_bytes.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by outcome",
            config_reloads.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            store_secrets,
            store_keys,
            store_bytes,
            audit_sink_dropped,
            config_reloads,
            jwks_fetches,
            exchanges,
            grpc_connection_events,
            storage_pool,
            storage_operations,
            storage_operation_seconds,
            storage_change_lag_ms,
            leader,
            leader_term,
        }
    }

    /// Sets the storage figures of a backend that has them.
    pub fn storage(&self, s: &crate::storage::BackendStats) {
        let l = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        self.storage_pool
            .get_or_create(&l("state", "open"))
            .set(s.pool_open as i64);
        self.storage_pool
            .get_or_create(&l("state", "idle"))
            .set(s.pool_idle as i64);
        self.storage_pool
            .get_or_create(&l("state", "max"))
            .set(s.pool_max as i64);
        self.storage_operations
            .get_or_create(&l("op", "read"))
            .set(s.reads as i64);
        self.storage_operations
            .get_or_create(&l("op", "commit"))
            .set(s.commits as i64);
        self.storage_operation_seconds
            .get_or_create(&l("op", "read"))
            .set(s.read_seconds);
        self.storage_operation_seconds
            .get_or_create(&l("op", "commit"))
            .set(s.commit_seconds);
        self.storage_change_lag_ms.set(s.change_lag_ms);
    }

    /// Counts an issuer key fetch.
    pub fn jwks_fetch(&self, issuer: &str, ok: bool) {
        self.jwks_fetches
            .get_or_create(&vec![
                ("issuer".to_string(), label(issuer)),
                (
                    "outcome".to_string(),
                    if ok { "ok" } else { "failed" }.to_string(),
                ),
            ])
            .inc();
    }

    /// Counts a token exchange.
    pub fn exchange(&self, role: &str, outcome: &str) {
        self.exchanges
            .get_or_create(&vec![
                ("role".to_string(), label(role)),
                ("outcome".to_string(), outcome.to_string()),
            ])
            .inc();
    }

    /// Records one finished request.
    pub fn observe(&self, rpc: &str, code: tonic::Code, started: Instant) {
        self.requests
            .get_or_create(&RpcStatus {
                rpc: label(rpc),
                code: code_name(code).to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&Rpc { rpc: label(rpc) })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Sets a gRPC listener event count.
    pub fn connection_events(&self, event: &str, n: u64) {
        self.grpc_connection_events
            .get_or_create(&vec![("event".to_string(), label(event))])
            .set(n as i64);
    }

    /// Counts a config reload.
    pub fn reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&vec![(
                "outcome".to_string(),
                if ok { "ok" } else { "refused" }.to_string(),
            )])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        #[cfg(feature = "test-hooks")]
        {
            // the process's allocations so far (test builds only; tests/alloc_budget.rs)
            let n = stats_alloc::INSTRUMENTED_SYSTEM.stats().allocations;
            let at = out.rfind("# EOF").unwrap_or(out.len());
            out.insert_str(
                at,
                &format!(
                    "# TYPE keygate_test_allocations counter\nkeygate_test_allocations_total {n}\n"
                ),
            );
        }
        out
    }
}

/// The label value of anything that is not a configured name (roles, methods).
pub const UNKNOWN: &str = "unknown";

/// A label value escaped for the text exposition (the encoder writes values verbatim): labels
/// come from configured names only, and this keeps even those from breaking the format.
pub fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The canonical gRPC name of a status code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
