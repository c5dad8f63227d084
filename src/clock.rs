//! The clock is passed in, never read deep inside logic, so expiry and rotation are testable.
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock fixed at a chosen instant, for tests.
#[derive(Debug)]
pub struct FixedClock(pub std::sync::atomic::AtomicU64);

impl FixedClock {
    /// A clock that reads `millis` until advanced.
    pub fn at(millis: u64) -> Self {
        Self(std::sync::atomic::AtomicU64::new(millis))
    }

    /// Moves the clock forward.
    pub fn advance(&self, millis: u64) {
        self.0
            .fetch_add(millis, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now_millis(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Milliseconds since the epoch as a protobuf timestamp.
pub fn to_timestamp(millis: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (millis / 1000) as i64,
        nanos: ((millis % 1000) * 1_000_000) as i32,
    }
}
