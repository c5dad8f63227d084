//! Two replicas that both believe they lead (the old leader paused past its lease while its
//! clock lags) race the same rotation on one PostgreSQL database: the fencing token lets only
//! the current leader's steps commit, so no step runs twice and no rotation is lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "common/pg.rs"]
mod pg;

use keygate::clock::FixedClock;
use keygate::database::Databases;
use keygate::leader::Leadership;
use keygate::rotation::config::{check, RawField, RawRotation};
use keygate::rotation::state::Trigger;
use keygate::rotation::Rotator;
use keygate::secrets::envelope::Kek;
use keygate::secrets::path::SecretPath;
use keygate::secrets::SecretStore;
use keygate::sensitive::SecretBytes;
use keygate::storage::{PgStorage, Storage};
use std::collections::BTreeMap;
use std::sync::Arc;

const T0: u64 = 1_795_737_600_000;

fn policy() -> RawRotation {
    let mut fields = BTreeMap::new();
    fields.insert(
        "password".to_string(),
        RawField {
            generator: "password".into(),
            length: Some(24),
            ..Default::default()
        },
    );
    RawRotation {
        path: "app/race".into(),
        every: Some("1h".into()),
        fields,
        ..Default::default()
    }
}

struct Replica {
    store: Arc<SecretStore>,
    leadership: Arc<Leadership>,
    rotator: Arc<Rotator>,
}

async fn replica(url: &str, node: &str, clock: Arc<FixedClock>) -> Replica {
    let cfg = pg::store_config(url);
    let storage: Arc<dyn Storage> = Arc::new(PgStorage::open(&cfg).await.unwrap());
    let kek = Kek::from_bytes(&SecretBytes::new(vec![7; 32])).unwrap();
    let store = Arc::new(
        SecretStore::open(storage.clone(), kek, clock.clone())
            .await
            .unwrap(),
    );
    let leadership = Arc::new(Leadership::new(storage, clock.clone(), node.into()));
    let dbs = Arc::new(Databases::new(Vec::new(), store.clone(), clock.clone()));
    let rotator = Arc::new(Rotator::new(
        store.clone(),
        dbs,
        clock,
        None,
        vec![check(&policy(), "config").unwrap()],
    ));
    rotator.set_leadership(leadership.clone());
    Replica {
        store,
        leadership,
        rotator,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deposed_leader_that_still_believes_it_leads_commits_no_rotation_step() {
    let (db, url) = pg::fresh_database().await;
    // a's clock lags b's by 20 s: by b's clock a's lease has long expired, by a's it has not
    let a = replica(&url, "a", Arc::new(FixedClock::at(T0))).await;
    let b = replica(&url, "b", Arc::new(FixedClock::at(T0 + 20_000))).await;
    assert!(a.leadership.step().await.unwrap());
    assert!(
        b.leadership.step().await.unwrap(),
        "b takes over the expired lease"
    );
    assert!(
        a.leadership.is_leader(),
        "a has not noticed: it still believes it leads"
    );
    let (ta, tb) = (a.leadership.term().unwrap(), b.leadership.term().unwrap());
    assert!(tb > ta);
    let path = SecretPath::parse("app/race").unwrap();
    let rounds = 25;
    let run = |r: Arc<Rotator>, path: SecretPath| {
        tokio::spawn(async move {
            let mut ok = 0u64;
            for _ in 0..rounds {
                if r.rotate(&path, Trigger::Manual).await.is_ok() {
                    ok += 1;
                }
            }
            ok
        })
    };
    let ha = run(a.rotator.clone(), path.clone());
    let hb = run(b.rotator.clone(), path.clone());
    let (ok_a, ok_b) = (ha.await.unwrap(), hb.await.unwrap());
    // the deposed leader may see a rotation of the leader's finish (and report it done), but
    // none of its own commits lands: the counts below would exceed the leader's otherwise
    println!(
        "deposed leader's rotate calls that returned Ok (seen finished by the leader): {ok_a}"
    );
    assert_eq!(ok_b, rounds, "the leader's rotations all completed");
    let meta = b.store.metadata(&path).await.unwrap();
    assert_eq!(
        meta.current_version, rounds,
        "one version per rotation: no step ran twice"
    );
    assert_eq!(meta.pending_version, None);
    let st = b.rotator.status("app/").await.unwrap();
    assert_eq!(st[0].state.rotations, rounds);
    // the deposed leader's view lapses and then it follows
    drop((a, b));
    pg::drop_database(&db).await;
}
