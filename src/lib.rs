//! keygate: a secrets and workload-identity broker.
//!
//! Modules by trust boundary: `config` (typed settings), `tls` (rustls setup), `storage` (the
//! trait and its backends), `secrets` (versioned store, envelope encryption), `authz` (who may do
//! what), `api` (gRPC handlers only; the one place errors become `tonic::Status`), `server`
//! (the daemon), `cli` (the command line), `devenv` (`keygate dev`).
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod audit;
pub mod authz;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod config_error;
pub mod credential;
pub mod database;
pub mod devenv;
pub mod devissuer;
pub mod duration;
pub mod error_chain;
pub mod failover;
pub mod fsutil;
pub mod fuzzing;
pub mod generate;
pub mod identity;
pub mod injector;
pub mod leader;
pub mod logging;
pub mod metrics;
/// The policy model (the `keygate-policy` crate).
pub use keygate_policy as policy;
/// Generated protobuf and gRPC code (the `keygate-proto` crate).
pub use keygate_proto as pb;
pub mod rotation;
pub mod secrets;
pub mod sensitive;
pub mod server;
pub mod storage;
pub mod tls;
pub mod vault;

/// Exit code for a bad config or bad usage (BSD `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;
