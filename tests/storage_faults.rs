//! A full data disk, through the real daemon on a small tmpfs: writes fail fast with
//! UNAVAILABLE naming the disk, reads of existing secrets keep working, writes succeed again
//! once space is freed (no restart), health answers throughout, and SIGTERM exits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use keygate::pb;
use keygate::pb::secrets_client::SecretsClient;
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn put(path: &str, value: Vec<u8>) -> pb::PutSecretRequest {
    pb::PutSecretRequest {
        path: path.into(),
        fields: HashMap::from([("v".to_string(), value)]),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_data_disk_fails_writes_fast_keeps_reads_and_recovers_without_restart() {
    let env = TestEnv::new();
    let data = env.data_dir();
    std::fs::create_dir_all(&data).unwrap();
    match Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&data)
        .output()
    {
        Ok(o) if o.status.success() => {}
        other => {
            println!("SKIPPED: mounting a small tmpfs was refused: {other:?}");
            return;
        }
    }
    let _guard = Unmount(data.clone());
    let d = env.start();
    let ch = env.admin_channel(&d).await;
    let mut c = SecretsClient::new(ch.clone());
    c.put(put("keep/a", b"existing".to_vec())).await.unwrap();
    // fill the disk beside the store
    let filler = data.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // writes fail (fast, UNAVAILABLE, naming the disk) — not hang
    let mut failed = None;
    let mut failed_path = String::new();
    for i in 0..200 {
        failed_path = format!("full/s{i}");
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            c.put(put(&format!("full/s{i}"), vec![b'x'; 16 * 1024])),
        )
        .await
        .expect("a write hung on the full disk");
        if let Err(s) = r {
            failed = Some((s, t.elapsed()));
            break;
        }
    }
    let (status, took) = failed.expect("the disk never filled");
    println!(
        "write on the full disk: {:?} {:?} after {took:?}",
        status.code(),
        status.message()
    );
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("data disk is full"), "{status:?}");
    // reads of existing secrets keep working
    let got = c
        .get(pb::GetSecretRequest {
            path: "keep/a".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| {
            let log = d.log_text();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("reopen"))
                .take(5)
                .collect();
            panic!("a read failed on the full disk: {e:?}\n{tail:#?}")
        })
        .into_inner();
    assert_eq!(got.fields["v"], b"existing");
    // the refused write is not readable: it never became durable
    let reader = c.clone();
    let read_failed = move |path: String| {
        let mut c = reader.clone();
        async move {
            c.get(pb::GetSecretRequest {
                path,
                ..Default::default()
            })
            .await
            .map(|_| ())
        }
    };
    let code = read_failed(failed_path.clone()).await.unwrap_err().code();
    assert!(
        matches!(code, tonic::Code::NotFound | tonic::Code::Unavailable),
        "{code:?}"
    );
    // health still answers on a new connection
    let mut h = tonic_health::pb::health_client::HealthClient::new(env.channel_as(&d, None).await);
    h.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await
    .unwrap();
    // space again: writes succeed without a restart
    std::fs::remove_file(&filler).unwrap();
    let mut ok = false;
    for _ in 0..50 {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            c.put(put("after/ok", b"y".to_vec())),
        )
        .await
        .expect("a write hung after space was freed");
        if r.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "writes did not recover once space was freed");
    let got = c
        .get(pb::GetSecretRequest {
            path: "after/ok".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.fields["v"], b"y");
    // after the reopen the refused write is gone, the earlier ones are there
    assert_eq!(
        read_failed(failed_path).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    read_failed("keep/a".into()).await.unwrap();
    // full again, store broken: SIGTERM still exits, reporting the final flush it could not do
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
    for i in 0..200 {
        if c.put(put(&format!("again/s{i}"), vec![b'x'; 16 * 1024]))
            .await
            .is_err()
        {
            break;
        }
    }
    let asked = Instant::now();
    let code = d.stop();
    let took = asked.elapsed();
    println!("SIGTERM with the store broken: exit {code} after {took:?}");
    assert!(code == 0 || code == 1, "{code}");
    assert!(took < Duration::from_secs(30), "{took:?}");
}
