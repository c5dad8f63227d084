//! Rotation scheduling with an injected clock: interval and cron runs at the right times, a
//! missed run runs once, rotations never overlap, overlap and `previous`, crash-safe state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate::clock::{Clock, FixedClock};
use keygate::database::Databases;
use keygate::rotation::config::{check, RawField, RawRotation};
use keygate::rotation::state::Step;
use keygate::rotation::Rotator;
use keygate::secrets::envelope::Kek;
use keygate::secrets::{SecretStore, SecretsError};
use keygate::sensitive::SecretBytes;
use keygate::storage::SledStorage;
use std::collections::BTreeMap;
use std::sync::Arc;

const HOUR: u64 = 3_600_000;
const MIN: u64 = 60_000;

/// 2026-11-27T00:00:00Z
const T0: u64 = 1_795_737_600_000;

struct World {
    _dir: tempfile::TempDir,
    clock: Arc<FixedClock>,
    store: Arc<SecretStore>,
    rotator: Rotator,
}

fn policy(path: &str, every: Option<&str>, cron: Option<&str>, overlap: &str) -> RawRotation {
    let mut fields = BTreeMap::new();
    fields.insert(
        "password".to_string(),
        RawField {
            generator: "password".into(),
            length: Some(24),
            ..Default::default()
        },
    );
    fields.insert(
        "key".to_string(),
        RawField {
            generator: "ed25519".into(),
            ..Default::default()
        },
    );
    RawRotation {
        path: path.into(),
        every: every.map(str::to_string),
        cron: cron.map(str::to_string),
        window: None,
        overlap: Some(overlap.into()),
        fields,
        postgres: None,
    }
}

async fn world(policies: Vec<RawRotation>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(SledStorage::open(&dir.path().join("db")).unwrap());
    let clock = Arc::new(FixedClock::at(T0));
    let kek = Kek::from_bytes(&SecretBytes::new(vec![9; 32])).unwrap();
    let store = Arc::new(
        SecretStore::open(storage, kek, clock.clone())
            .await
            .unwrap(),
    );
    let rotator = make(&store, &clock, &policies);
    World {
        _dir: dir,
        clock,
        store,
        rotator,
    }
}

fn make(store: &Arc<SecretStore>, clock: &Arc<FixedClock>, policies: &[RawRotation]) -> Rotator {
    let dbs = Arc::new(Databases::new(Vec::new(), store.clone(), clock.clone()));
    Rotator::new(
        store.clone(),
        dbs,
        clock.clone(),
        None,
        policies
            .iter()
            .map(|p| check(p, "config").unwrap())
            .collect(),
    )
}

async fn current(w: &World, path: &str) -> u64 {
    w.store.metadata(&sp(path)).await.unwrap().current_version
}

/// Advances the clock minute by minute for `span`, ticking at each; returns (time, version)
/// of every change of the current version.
async fn run_for(w: &World, path: &str, span: u64) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    let mut last = current(w, path).await;
    let end = w.clock.now_millis() + span;
    while w.clock.now_millis() < end {
        w.clock.advance(MIN);
        w.rotator.tick().await.unwrap();
        let v = current(w, path).await;
        if v != last {
            seen.push((w.clock.now_millis(), v));
            last = v;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn interval_schedule_rotates_at_the_right_times_and_keeps_previous_during_overlap() {
    let w = world(vec![policy("app/db", Some("6h"), None, "30m")]).await;
    // no secret yet: the first tick creates it
    assert_eq!(w.rotator.tick().await.unwrap(), 1);
    assert_eq!(current(&w, "app/db").await, 1);
    let first = w.store.get(&sp("app/db"), 0).await.unwrap();
    assert_eq!(first.fields.get(&sp("password")).unwrap().len(), 24);
    assert!(first.fields.get(&sp("key_public")).is_some());

    let changes = run_for(&w, "app/db", 24 * HOUR).await;
    let times: Vec<u64> = changes.iter().map(|c| (c.0 - T0) / MIN).collect();
    assert_eq!(times, vec![360, 720, 1080, 1440], "rotations at every 6h");
    assert_eq!(changes.last().unwrap().1, 5);

    // just after a rotation: previous readable, and soft-deleted when the overlap ends
    w.rotator
        .rotate(&sp("app/db"), keygate::rotation::state::Trigger::Manual)
        .await
        .unwrap();
    let meta = w.store.metadata(&sp("app/db")).await.unwrap();
    assert_eq!(meta.current_version, 6);
    assert_eq!(meta.previous_version, Some(5));
    let prev = w.store.get_previous(&sp("app/db")).await.unwrap();
    assert_eq!(prev.version, 5);
    assert_ne!(
        prev.fields.get(&sp("password")),
        w.store
            .get(&sp("app/db"), 0)
            .await
            .unwrap()
            .fields
            .get(&sp("password"))
    );
    // carried-over fields: only generated ones change
    w.clock.advance(31 * MIN);
    w.rotator.tick().await.unwrap();
    assert!(matches!(
        w.store.get_previous(&sp("app/db")).await,
        Err(SecretsError::NotFound(_))
    ));
    assert!(matches!(
        w.store.get(&sp("app/db"), 5).await,
        Err(SecretsError::VersionDeleted { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_schedule_runs_at_three_utc_and_a_missed_run_runs_once() {
    let p = policy("app/cron", None, Some("0 3 * * *"), "10m");
    let w = world(vec![p.clone()]).await;
    w.rotator.tick().await.unwrap();
    let changes = run_for(&w, "app/cron", 3 * 24 * HOUR).await;
    let hours: Vec<u64> = changes.iter().map(|c| (c.0 - T0) / HOUR).collect();
    assert_eq!(hours, vec![3, 27, 51], "03:00 UTC each day");
    for (t, _) in &changes {
        assert_eq!((t - T0) % HOUR, 0, "on the minute");
    }

    // the daemon is down for three days: at start, one run, then back on schedule
    let before = current(&w, "app/cron").await;
    w.clock.advance(3 * 24 * HOUR);
    let restarted = make(&w.store, &w.clock, &[p]);
    assert_eq!(restarted.tick().await.unwrap(), 1);
    assert_eq!(restarted.tick().await.unwrap(), 0, "a missed run runs once");
    assert_eq!(current(&w, "app/cron").await, before + 1);
    let st = restarted.status("app/").await.unwrap();
    assert_eq!(
        st[0].state.trigger,
        Some(keygate::rotation::state::Trigger::Missed)
    );
    let next = st[0].state.next_run_at.unwrap();
    assert_eq!(
        (next - T0) % (24 * HOUR),
        3 * HOUR,
        "next run back at 03:00"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_rotations_never_overlap() {
    let policies = vec![policy("app/race", Some("1h"), None, "0s")];
    let w = Arc::new(world(policies.clone()).await);
    // a second engine on the same store, as a second replica would be: only the storage
    // check-and-set keeps them apart (the in-process guard does not span the two)
    let other = Arc::new(make(&w.store, &w.clock, &policies));
    w.rotator.tick().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (w, other) = (w.clone(), other.clone());
        tasks.push(tokio::spawn(async move {
            let r = if i % 2 == 0 { &w.rotator } else { &*other };
            r.rotate(&sp("app/race"), keygate::rotation::state::Trigger::Manual)
                .await
                .is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() {
            ok += 1;
        }
    }
    assert!(ok >= 1);
    let meta = w.store.metadata(&sp("app/race")).await.unwrap();
    let st = w.rotator.status("app/race").await.unwrap();
    assert_eq!(st[0].state.step, Step::Idle);
    assert!(meta.pending_version.is_none());
    // every completed rotation (the initial one included) made exactly one version current;
    // none was staged twice or lost
    assert_eq!(meta.current_version, st[0].state.rotations, "{meta:?}");
    assert!(st[0].state.rotations >= 3, "both engines rotated");
    let destroyed = meta.versions.values().filter(|v| v.destroyed).count();
    assert_eq!(destroyed, 0, "no rotation was rolled back: {meta:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_wait_for_a_pending_rotation_and_pending_versions_are_unreadable() {
    let w = world(vec![policy("app/p", Some("1h"), None, "5m")]).await;
    w.rotator.tick().await.unwrap();
    // stage by hand as a crashed rotation would have left it
    let fields = w.store.get(&sp("app/p"), 0).await.unwrap().fields;
    let v = w
        .store
        .stage(&sp("app/p"), &fields, 1, keygate::storage::Txn::default())
        .await
        .unwrap();
    assert!(matches!(
        w.store.get(&sp("app/p"), v).await,
        Err(SecretsError::VersionPending { .. })
    ));
    assert_eq!(w.store.get(&sp("app/p"), 0).await.unwrap().version, 1);
    let put = w
        .store
        .put(&sp("app/p"), &fields, &Default::default())
        .await
        .unwrap_err();
    assert!(matches!(put, SecretsError::RotationInProgress(_)));
    assert!(w
        .store
        .discard_pending(&sp("app/p"), v, Default::default())
        .await
        .unwrap());
    // numbers are never reused
    let (next, _) = w
        .store
        .put(&sp("app/p"), &fields, &Default::default())
        .await
        .unwrap();
    assert_eq!(next, v + 1);
}

#[test]
fn policies_are_checked() {
    let ok = policy("a/b", Some("1h"), None, "10m");
    assert!(check(&ok, "config").is_ok());
    let mut both = ok.clone();
    both.cron = Some("0 3 * * *".into());
    assert_eq!(check(&both, "config").unwrap_err().0, "every");
    let mut long_overlap = ok.clone();
    long_overlap.overlap = Some("2h".into());
    assert_eq!(check(&long_overlap, "config").unwrap_err().0, "overlap");
    let mut wide = ok.clone();
    wide.window = Some("1h".into());
    assert_eq!(check(&wide, "config").unwrap_err().0, "window");
    let mut sys = ok.clone();
    sys.path = "_sys/x".into();
    assert_eq!(check(&sys, "config").unwrap_err().0, "path");
    let mut nothing = ok.clone();
    nothing.fields.clear();
    assert_eq!(check(&nothing, "config").unwrap_err().0, "fields");
    let mut bad_gen = ok;
    bad_gen.fields.insert(
        "x".into(),
        RawField {
            generator: "uuid".into(),
            ..Default::default()
        },
    );
    assert_eq!(check(&bad_gen, "config").unwrap_err().0, "fields");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_rotation_retries_with_backoff_then_rolls_back() {
    use keygate::database::config::DatabaseConfig;
    use keygate::rotation::config::RawPostgres;
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(SledStorage::open(&dir.path().join("db")).unwrap());
    let clock = Arc::new(FixedClock::at(T0));
    let kek = Kek::from_bytes(&SecretBytes::new(vec![9; 32])).unwrap();
    let store = Arc::new(
        SecretStore::open(storage, kek, clock.clone())
            .await
            .unwrap(),
    );
    // a database nobody listens on
    let dbs = Arc::new(Databases::new(
        vec![DatabaseConfig {
            name: "gone".into(),
            url: "postgres://postgres@127.0.0.1:1/test".into(),
            password_secret: None,
            connect_timeout_secs: 1,
            roles: vec![],
            rotatable_roles: vec!["app".into()],
        }],
        store.clone(),
        clock.clone(),
    ));
    let raw = RawRotation {
        path: "db/s".into(),
        every: Some("1h".into()),
        postgres: Some(RawPostgres {
            database: "gone".into(),
            roles: vec!["app".into()],
            password_length: None,
        }),
        ..Default::default()
    };
    let r = Rotator::new(
        store.clone(),
        dbs,
        clock.clone(),
        None,
        vec![check(&raw, "config").unwrap()],
    );
    r.tick().await.unwrap();
    let s = &r.status("db/").await.unwrap()[0];
    assert_eq!(s.state.step, Step::Pending, "stuck at pending, visible");
    assert_eq!(s.state.attempts, 1);
    assert!(
        s.state
            .last_error
            .as_deref()
            .unwrap()
            .contains("unavailable"),
        "{:?}",
        s.state.last_error
    );
    assert_eq!(s.pending_version, Some(1));
    // not retried before the backoff
    r.tick().await.unwrap();
    assert_eq!(r.status("db/").await.unwrap()[0].state.attempts, 1);
    let mut ticks = 0;
    while r.status("db/").await.unwrap()[0].state.step != Step::Idle {
        ticks += 1;
        assert!(ticks < 20, "never rolled back");
        clock.advance(5 * MIN);
        r.tick().await.unwrap();
    }
    assert_eq!(ticks, 4, "four retries after the first failure");
    let s = &r.status("db/").await.unwrap()[0];
    assert_eq!(s.state.step, Step::Idle, "rolled back");
    assert!(s
        .state
        .last_error
        .as_deref()
        .unwrap()
        .starts_with("rolled back after 5"));
    assert_eq!(s.pending_version, None);
    // nothing became current
    let meta = store.metadata(&sp("db/s")).await.unwrap();
    assert_eq!(meta.current_version, 0);
    assert!(meta.versions[&1].destroyed);
    assert!(matches!(
        store.get(&sp("db/s"), 0).await,
        Err(SecretsError::VersionNotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_keys_rotate_through_the_same_state_machine_and_stay_published() {
    use keygate::credential::{Credentials, SIGNING_KEYS_PATH};
    let w = world(vec![]).await;
    // rotate every 2 h; the longest credential lives 1 h
    let creds = Arc::new(
        Credentials::open(
            w.store.clone(),
            w.clock.clone(),
            "https://k".into(),
            "https://k".into(),
            2 * 3600,
            3600,
        )
        .await
        .unwrap(),
    );
    w.rotator.register_system(creds.clone());
    w.rotator.tick().await.unwrap();
    let first = creds.kids().await;
    assert_eq!(first.len(), 1);
    let st = &w.rotator.status("_sys/").await.unwrap()[0];
    assert_eq!(st.policy.source, "system");
    assert_eq!(st.state.next_run_at, Some(T0 + 2 * HOUR));

    let changes = run_for(&w, &SIGNING_KEYS_PATH, 5 * HOUR).await;
    let hours: Vec<u64> = changes.iter().map(|c| (c.0 - T0) / HOUR).collect();
    assert_eq!(hours, vec![2, 4], "a new signing key every 2 h");
    let kids = creds.kids().await;
    // the key retired at 2 h signed credentials valid until 3 h: gone at 5 h; the key retired
    // at 4 h stays until 5 h; the newest signs
    assert_eq!(kids.len(), 2, "{kids:?}");
    assert!(!kids.contains(&first[0]));
    let jwks = creds.jwks().await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    // every step audited in the state: rotations counted, nothing pending
    let st = &w.rotator.status("_sys/").await.unwrap()[0];
    assert_eq!(st.state.rotations, 2);
    assert_eq!(st.pending_version, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jitter_window_spreads_runs_inside_it() {
    let mut p = policy("app/j", Some("1h"), None, "0s");
    p.window = Some("10m".into());
    let w = world(vec![p]).await;
    let mut offsets = std::collections::BTreeSet::new();
    for _ in 0..20 {
        w.rotator
            .rotate(&sp("app/j"), keygate::rotation::state::Trigger::Manual)
            .await
            .unwrap();
        let st = &w.rotator.status("app/").await.unwrap()[0];
        let next = st.state.next_run_at.unwrap();
        let base = st.state.last_rotated_at.unwrap() + HOUR;
        assert!(
            next >= base && next < base + 10 * MIN,
            "{next} outside the window"
        );
        offsets.insert(next - base);
    }
    assert!(offsets.len() > 10, "no jitter: {offsets:?}");
}

fn sp(path: &str) -> keygate::secrets::path::SecretPath {
    keygate::secrets::path::SecretPath::parse(path).unwrap()
}
