//! Compiles `proto/keygate/v1/*.proto` with protox (pure Rust): `cargo build` needs no system
//! `protoc`. The encoded descriptor set is written to OUT_DIR for gRPC server reflection.
use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "../../proto/keygate/v1/secrets.proto",
        "../../proto/keygate/v1/admin.proto",
        "../../proto/keygate/v1/token_exchange.proto",
        "../../proto/keygate/v1/leases.proto",
        "../../proto/keygate/v1/database_credentials.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["../../proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("keygate_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Debug for these is written by hand in src/pb.rs and prints no value.
        .skip_debug([
            "keygate.v1.GetSecretResponse",
            "keygate.v1.PutSecretRequest",
            "keygate.v1.ExchangeRequest",
            "keygate.v1.ExchangeResponse",
            "keygate.v1.DatabaseCredential",
            "keygate.v1.RenewLeaseResponse",
            "keygate.v1.ExplainRequest",
            "keygate.v1.AuditHashRequest",
        ])
        .compile_fds(fds)?;
    Ok(())
}
