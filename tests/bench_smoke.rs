//! The benchmark tools cannot rot: a tiny run of each through the real binary (timings are not
//! asserted; figures come from release builds, docs/performance.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use serde_json::Value;
use std::process::Command;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(common::BIN)
        .arg("bench")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn floor_and_every_load_scenario_run_and_report_their_fields() {
    let f = bench(&["floor", "--duration", "200ms", "--json"]);
    for k in ["cores", "exchange_1", "exchange_all", "read_1", "read_all"] {
        assert!(f[k].as_f64().unwrap() > 0.0, "{k}: {f}");
    }
    for scenario in ["exchange", "read", "mixed"] {
        let r = bench(&[
            scenario,
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--concurrency",
            "2",
            "--floor-secs",
            "0.2",
            "--json",
        ]);
        for k in [
            "scenario",
            "requests_per_s",
            "errors",
            "p50_ms",
            "p99_ms",
            "p999_ms",
            "floor_per_s",
            "ratio_to_floor",
        ] {
            assert!(r.get(k).is_some(), "{scenario}: no {k} in {r}");
        }
        assert_eq!(r["scenario"], scenario);
        assert!(r["requests_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["errors"], serde_json::json!({}), "{r}");
        assert!(r["p50_ms"].as_f64().unwrap() <= r["p99_ms"].as_f64().unwrap());
        assert!(r["ratio_to_floor"].as_f64().unwrap() > 0.0);
    }
    // open loop at a fixed rate
    let r = bench(&[
        "read",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--rate",
        "50",
        "--concurrency",
        "4",
        "--floor-secs",
        "0.2",
        "--json",
    ]);
    assert_eq!(r["offered_per_s"], 50.0);
    let done = r["requests"].as_u64().unwrap();
    assert!(
        (40..=60).contains(&done),
        "a 50/s offered load for 1 s completed {done}"
    );
}
