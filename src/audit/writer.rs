//! The durable audit writer: one thread owns the files; requests queue records and wait until a
//! batch holding theirs is written and `fdatasync`ed (group commit). Sequence numbers and the
//! hash chain advance only on a successful sync; a failed write is truncated away before the
//! next attempt, so the log never holds a half record and recovers by itself.
use super::record::{
    checkpoint_message, key_rotation_message, line_hash, seal_message, Kind, Record, GENESIS,
};
use super::table::{kind_name, AuditTable, Row};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Writer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterConfig {
    /// Directory of the segments.
    pub dir: PathBuf,
    /// Start a new segment past this size.
    pub segment_bytes: u64,
    /// Checkpoint after this many records…
    pub checkpoint_every: u64,
    /// …or this long after the last one, whichever comes first.
    pub checkpoint_interval: Duration,
    /// A request waits at most this long for its record to be durable.
    pub write_deadline: Duration,
    /// Node id written in every record.
    pub node: String,
    /// Optional second, best-effort copy of every line.
    pub sink: Option<Sink>,
    /// Lines the second sink may lag behind before lines are dropped (and counted).
    pub sink_queue: usize,
    /// Where the durable head (`seq chain-hash`) is kept, outside the audit directory.
    pub head_file: Option<PathBuf>,
}

/// Where the second copy goes. It never blocks the durable log: a slow or absent reader only
/// makes it drop lines, counted in `keygate_audit_sink_dropped_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// The daemon's standard output.
    Stdout,
    /// A Unix stream socket (reconnected as needed).
    Unix(PathBuf),
}

fn sink_thread(sink: Sink, rx: Receiver<Vec<u8>>, dropped: Arc<AtomicU64>) {
    let mut conn: Option<std::os::unix::net::UnixStream> = None;
    let mut retry_at = Instant::now();
    while let Ok(mut line) = rx.recv() {
        line.push(b'\n');
        let ok = match &sink {
            Sink::Stdout => std::io::stdout().lock().write_all(&line).is_ok(),
            Sink::Unix(path) => {
                if conn.is_none() && Instant::now() >= retry_at {
                    conn = std::os::unix::net::UnixStream::connect(path)
                        .ok()
                        .inspect(|c| {
                            let _ = c.set_write_timeout(Some(Duration::from_secs(1)));
                        });
                    if conn.is_none() {
                        retry_at = Instant::now() + Duration::from_secs(1);
                    }
                }
                let sent = conn.as_mut().map(|c| c.write_all(&line).is_ok());
                match sent {
                    Some(true) => true,
                    Some(false) => {
                        conn = None;
                        retry_at = Instant::now() + Duration::from_secs(1);
                        false
                    }
                    None => false,
                }
            }
        };
        if !ok {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Why a record could not be made durable.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuditError {
    /// Writing or syncing failed (disk full, I/O error).
    #[error("audit log write failed: {0}")]
    Io(String),
    /// The writer did not confirm within the deadline.
    #[error("audit log writer stalled")]
    Stalled,
    /// The queue is full.
    #[error("audit log queue full")]
    Full,
    /// The writer has stopped.
    #[error("audit log closed")]
    Closed,
}

enum Msg {
    Append(Box<Record>, oneshot::Sender<Result<u64, AuditError>>),
    Close(oneshot::Sender<()>),
    /// Holds the writer still (a stalled disk), for tests of the deadline.
    #[cfg(any(test, feature = "test-hooks"))]
    Stall(Duration),
    /// Hands checkpoint signing over to a new key.
    RotateKey(
        Box<Ed25519KeyPair>,
        oneshot::Sender<Result<bool, AuditError>>,
    ),
}

/// The running audit log.
pub struct AuditWriter {
    tx: SyncSender<Msg>,
    healthy: Arc<AtomicBool>,
    deadline: Duration,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Records written since start.
    pub written: Arc<AtomicU64>,
    /// Lines the second sink dropped.
    pub sink_dropped: Arc<AtomicU64>,
    head: Arc<Mutex<(u64, String)>>,
    public: Arc<Mutex<Vec<u8>>>,
    store: &'static str,
}

/// Milliseconds since the epoch as RFC 3339.
pub fn rfc3339(millis: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(millis as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Now as RFC 3339.
pub fn now_rfc3339() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    rfc3339(ms)
}

/// Segment file name for a first sequence number.
pub fn segment_name(first_seq: u64) -> String {
    format!("audit-{first_seq:020}.log")
}

/// Segment files in order.
pub fn segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".log"))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// What reopening found.
struct Opened {
    /// Bytes of a torn last line that were cut.
    truncated: Option<u64>,
    /// Records that did not verify (first, last seq) and why.
    unverified: Option<([u64; 2], String)>,
}

/// The sequence number of the last line of a (closed) segment.
fn last_seq_of(p: &Path) -> Result<u64, String> {
    let b = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(b.split(|c| *c == b'\n')
        .rfind(|l| !l.is_empty())
        .and_then(|l| serde_json::from_slice::<Record>(l).ok())
        .map(|r| r.seq)
        .unwrap_or(0))
}

struct State {
    cfg: WriterConfig,
    key: Ed25519KeyPair,
    log: Log,
    seq: u64,
    prev: String,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    sink: Option<SyncSender<Vec<u8>>>,
    dropped: Arc<AtomicU64>,
    /// Stamps every record's `time` as it is sequenced (the injected clock, as everywhere).
    clock: Arc<dyn crate::clock::Clock>,
}

/// Where the lines go.
enum Log {
    /// Segment files in `cfg.dir`.
    Files(FileLog),
    /// A database table (`[audit] store = "postgres"`).
    Table(TableLog),
}

struct FileLog {
    file: File,
    path: PathBuf,
    good_len: u64,
    head: Option<File>,
}

struct TableLog {
    table: Arc<dyn AuditTable>,
    /// The daemon's runtime, which drives the database connections; the writer thread blocks
    /// on it (it is not one of the runtime's threads).
    rt: tokio::runtime::Handle,
    /// A batch failed: whether its transaction committed is unknown, so the next batch starts
    /// from the chain's last row in the table.
    resync: bool,
}

impl FileLog {
    /// Appends `buf` (whole lines) and syncs it; a failed attempt's bytes are cut first.
    fn append(&mut self, buf: &[u8]) -> Result<(), AuditError> {
        let len = self.file.metadata().map_err(io)?.len();
        if len != self.good_len {
            self.file.set_len(self.good_len).map_err(io)?;
        }
        self.file.seek(SeekFrom::End(0)).map_err(io)?;
        self.file.write_all(buf).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.good_len += buf.len() as u64;
        Ok(())
    }

    /// Records the durable head (`seq chain-hash`) outside the audit directory, so that a
    /// restart notices records cut from the end of the log. One fixed-length write, no fsync:
    /// it survives a killed process; after a power loss it may lag (never lead) the log.
    fn write_head(&mut self, seq: u64, prev: &str) {
        if let Some(f) = &self.head {
            use std::os::unix::fs::FileExt;
            let line = format!("{seq:020} {prev}\n");
            if let Err(e) = f.write_all_at(line.as_bytes(), 0) {
                tracing::warn!(error = %e, "audit head file not updated");
            }
        }
    }
}

fn io(e: std::io::Error) -> AuditError {
    AuditError::Io(e.to_string())
}

impl State {
    fn new(cfg: WriterConfig, key: Ed25519KeyPair, log: Log, seq: u64, prev: String) -> Self {
        Self {
            cfg,
            key,
            log,
            seq,
            prev,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            sink: None,
            dropped: Arc::new(AtomicU64::new(0)),
            clock: Arc::new(crate::clock::SystemClock),
        }
    }

    /// Reads the chain's tail from the table and checks it as a restart checks the newest
    /// segment (every batch there ends in a seal, so unsealed lines are never taken on);
    /// lines that do not verify move to the quarantine table.
    async fn open_table(
        cfg: WriterConfig,
        key: Ed25519KeyPair,
        table: Arc<dyn AuditTable>,
    ) -> Result<(Self, Opened), String> {
        let node = cfg.node.clone();
        let rows = table.tail(&node).await?;
        let seq_before = rows.first().map(|r| r.0.saturating_sub(1)).unwrap_or(0);
        let mut bytes = Vec::new();
        for (_, line) in &rows {
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
        }
        let tc = super::tail::check_sealed(&bytes, key.public_key().as_ref(), seq_before);
        if let Some(u) = tc.unverified {
            let moved = table.quarantine(&node, u[0]).await?;
            tracing::error!(
                first = u[0],
                moved,
                "audit log: lines after the last seal did not verify; moved to keygate_audit_quarantine, never signed"
            );
        }
        let (seq, prev) = match tc.last.clone() {
            Some(l) => l,
            None => (0, GENESIS.to_string()),
        };
        let opened = Opened {
            truncated: None,
            unverified: tc
                .unverified
                .map(|u| (u, tc.why.clone().unwrap_or_default())),
        };
        let log = Log::Table(TableLog {
            table,
            rt: tokio::runtime::Handle::current(),
            resync: false,
        });
        Ok((Self::new(cfg, key, log, seq, prev), opened))
    }

    /// Opens the newest segment (or a first one), truncating a torn last line.
    fn open(cfg: WriterConfig, key: Ed25519KeyPair) -> Result<(Self, Opened), String> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| format!("{}: {e}", cfg.dir.display()))?;
        let segs = segments(&cfg.dir).map_err(|e| format!("{}: {e}", cfg.dir.display()))?;
        let mut seq = 0;
        let mut prev = GENESIS.to_string();
        let mut truncated = None;
        let mut unverified = None;
        let head = match &cfg.head_file {
            Some(p) => std::fs::read_to_string(p)
                .ok()
                .and_then(|t| super::tail::parse_head(&t)),
            None => None,
        };
        let head_file = match &cfg.head_file {
            Some(p) => Some(
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(p)
                    .map_err(|e| format!("{}: {e}", p.display()))?,
            ),
            None => None,
        };
        let path = match segs.last() {
            None => cfg.dir.join(segment_name(1)),
            Some(last) => {
                let mut bytes = Vec::new();
                File::open(last)
                    .and_then(|mut f| f.read_to_end(&mut bytes))
                    .map_err(|e| format!("{}: {e}", last.display()))?;
                let complete = bytes
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map(|i| i + 1)
                    .unwrap_or(0);
                if complete < bytes.len() {
                    truncated = Some((bytes.len() - complete) as u64);
                    let f = OpenOptions::new()
                        .write(true)
                        .open(last)
                        .map_err(|e| e.to_string())?;
                    f.set_len(complete as u64).map_err(|e| e.to_string())?;
                    f.sync_all().map_err(|e| e.to_string())?;
                    bytes.truncate(complete);
                }
                // the tail after the last signed record: kept only as far as it verifies
                let seq_before = match segs.len().checked_sub(2).map(|i| &segs[i]) {
                    Some(p) => last_seq_of(p)?,
                    None => 0,
                };
                let tc = super::tail::check(&bytes, key.public_key().as_ref(), head, seq_before);
                if !tc.quarantined.is_empty() {
                    let from = tc.unverified.map(|u| u[0]).unwrap_or(0);
                    let q = cfg.dir.join(format!("quarantine-{from:020}.log"));
                    std::fs::write(&q, &tc.quarantined)
                        .map_err(|e| format!("{}: {e}", q.display()))?;
                    let f = OpenOptions::new()
                        .write(true)
                        .open(last)
                        .map_err(|e| e.to_string())?;
                    f.set_len(tc.good_len as u64).map_err(|e| e.to_string())?;
                    f.sync_all().map_err(|e| e.to_string())?;
                    bytes.truncate(tc.good_len);
                }
                unverified = tc
                    .unverified
                    .map(|u| (u, tc.why.clone().unwrap_or_default()));
                // the chain continues from the last complete line, in this or an earlier segment
                let mut found = None;
                for p in segs.iter().rev() {
                    let b = if p == last {
                        bytes.clone()
                    } else {
                        std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?
                    };
                    if let Some(line) = b.split(|c| *c == b'\n').rfind(|l| !l.is_empty()) {
                        found = Some(line.to_vec());
                        break;
                    }
                }
                if let Some(line) = found {
                    let r: Record = serde_json::from_slice(&line)
                        .map_err(|e| format!("last audit record is unreadable: {e}"))?;
                    seq = r.seq;
                    prev = line_hash(&line);
                }
                last.clone()
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let good_len = file.metadata().map_err(|e| e.to_string())?.len();
        let log = Log::Files(FileLog {
            file,
            path,
            good_len,
            head: head_file,
        });
        Ok((
            Self::new(cfg, key, log, seq, prev),
            Opened {
                truncated,
                unverified,
            },
        ))
    }

    /// Serialises `recs` onto the chain and makes them durable; all or nothing.
    fn write(&mut self, recs: &mut [Record]) -> Result<u64, AuditError> {
        if let Log::Table(t) = &mut self.log {
            if t.resync {
                let last = t.rt.block_on(t.table.last(&self.cfg.node));
                let last = last.map_err(AuditError::Io)?;
                (self.seq, self.prev) = match last {
                    Some((seq, line)) => (seq, line_hash(line.as_bytes())),
                    None => (0, GENESIS.to_string()),
                };
                t.resync = false;
            }
        }
        let table = matches!(self.log, Log::Table(_));
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        let mut rows = Vec::new();
        let (mut seq, mut prev) = (self.seq, self.prev.clone());
        let n = recs.len();
        for (i, r) in recs.iter_mut().enumerate() {
            seq += 1;
            r.seq = seq;
            r.prev = prev.clone();
            r.node = self.cfg.node.clone();
            r.time = rfc3339(self.clock.now_millis());
            if r.kind == Kind::Checkpoint {
                let sig = self.key.sign(&checkpoint_message(seq, &prev, &r.time));
                r.sig = Some(B64.encode(sig.as_ref()));
            }
            if r.kind == Kind::KeyRotation {
                let new_key = r.key.clone().unwrap_or_default();
                let sig = self
                    .key
                    .sign(&key_rotation_message(seq, &prev, &r.time, &new_key));
                r.sig = Some(B64.encode(sig.as_ref()));
            }
            let mut line = serde_json::to_vec(r).map_err(|e| AuditError::Io(e.to_string()))?;
            if i + 1 == n && !matches!(r.kind, Kind::Checkpoint | Kind::KeyRotation) {
                // the batch's seal: nobody without the key can change, re-chain or cut what
                // this batch wrote and have the restart accept it
                let sig = self.key.sign(&seal_message(seq, &prev, &line_hash(&line)));
                r.seal = Some(B64.encode(sig.as_ref()));
                line = serde_json::to_vec(r).map_err(|e| AuditError::Io(e.to_string()))?;
            }
            prev = line_hash(&line);
            if table {
                // serde_json writes UTF-8
                let text =
                    String::from_utf8(line.clone()).map_err(|e| AuditError::Io(e.to_string()))?;
                rows.push(Row {
                    seq,
                    kind: kind_name(r.kind),
                    line: text,
                });
            } else {
                buf.extend_from_slice(&line);
                buf.push(b'\n');
            }
            if self.sink.is_some() {
                lines.push(line);
            }
        }
        match &mut self.log {
            // a previous failed attempt may have left bytes behind: cut back to the last good line
            Log::Files(f) => {
                f.append(&buf)?;
                f.write_head(seq, &prev);
            }
            Log::Table(t) => {
                let done = t.rt.block_on(t.table.append(&self.cfg.node, &rows));
                if let Err(e) = done {
                    t.resync = true;
                    return Err(AuditError::Io(e));
                }
            }
        }
        self.seq = seq;
        self.prev = prev;
        if let Some(sink) = &self.sink {
            for l in lines {
                if sink.try_send(l).is_err() {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(seq)
    }

    fn checkpoint_record(&self) -> Record {
        Record::new(Kind::Checkpoint)
    }

    fn checkpoint(&mut self) -> Result<(), AuditError> {
        let mut cp = [self.checkpoint_record()];
        self.write(&mut cp)?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Writes a `key_rotation` record signed by the current key that names `new`, then signs
    /// with `new`. Already the key in use: nothing is written (`Ok(false)`).
    fn rotate_key(&mut self, new: Ed25519KeyPair) -> Result<bool, AuditError> {
        if new.public_key().as_ref() == self.key.public_key().as_ref() {
            return Ok(false);
        }
        let mut rec = self.checkpoint_record();
        rec.kind = Kind::KeyRotation;
        rec.key = Some(B64.encode(new.public_key().as_ref()));
        self.write(&mut [rec])?;
        self.key = new;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(true)
    }

    fn maybe_rotate(&mut self) -> Result<(), AuditError> {
        match &self.log {
            Log::Files(f) if f.good_len >= self.cfg.segment_bytes => {}
            _ => return Ok(()),
        }
        // close the segment with a checkpoint, then continue the chain in a new file
        if self.since_checkpoint > 0 {
            self.checkpoint()?;
        }
        let path = self.cfg.dir.join(segment_name(self.seq + 1));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io)?;
        File::open(&self.cfg.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        if let Log::Files(f) = &mut self.log {
            f.file = file;
            f.path = path;
            f.good_len = 0;
        }
        Ok(())
    }
}

fn run(
    mut st: State,
    rx: Receiver<Msg>,
    healthy: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    head: Arc<Mutex<(u64, String)>>,
    public: Arc<Mutex<Vec<u8>>>,
) {
    loop {
        if let Ok(mut h) = head.lock() {
            *h = (st.seq, st.prev.clone());
        }
        let wait = st
            .cfg
            .checkpoint_interval
            .saturating_sub(st.last_checkpoint.elapsed())
            .max(Duration::from_millis(1));
        let first = match rx.recv_timeout(wait) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                if st.since_checkpoint > 0 {
                    healthy.store(st.checkpoint().is_ok(), Ordering::SeqCst);
                } else {
                    st.last_checkpoint = Instant::now();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = Vec::new();
        let mut close = None;
        let mut rotate = None;
        match first {
            Msg::Append(r, tx) => batch.push((r, tx)),
            Msg::Close(tx) => close = Some(tx),
            #[cfg(any(test, feature = "test-hooks"))]
            Msg::Stall(d) => std::thread::sleep(d),
            Msg::RotateKey(k, tx) => rotate = Some((k, tx)),
        }
        while close.is_none() && rotate.is_none() && batch.len() < 1024 {
            match rx.try_recv() {
                Ok(Msg::Append(r, tx)) => batch.push((r, tx)),
                Ok(Msg::Close(tx)) => close = Some(tx),
                #[cfg(any(test, feature = "test-hooks"))]
                Ok(Msg::Stall(d)) => std::thread::sleep(d),
                Ok(Msg::RotateKey(k, tx)) => rotate = Some((k, tx)),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let mut recs: Vec<Record> = batch.iter().map(|(r, _)| (**r).clone()).collect();
            let n = recs.len() as u64;
            let result = st.write(&mut recs);
            healthy.store(result.is_ok(), Ordering::SeqCst);
            if result.is_ok() {
                written.fetch_add(n, Ordering::Relaxed);
                st.since_checkpoint += n;
            }
            for ((_, tx), r) in batch.into_iter().zip(recs.iter()) {
                let _ = tx.send(result.clone().map(|_| r.seq));
            }
            if st.since_checkpoint >= st.cfg.checkpoint_every {
                healthy.store(st.checkpoint().is_ok(), Ordering::SeqCst);
            }
            if let Err(e) = st.maybe_rotate() {
                healthy.store(false, Ordering::SeqCst);
                tracing::error!(error = %e, "audit segment rotation failed");
            }
        }
        if let Some((k, tx)) = rotate {
            let r = st.rotate_key(*k);
            healthy.store(r.is_ok(), Ordering::SeqCst);
            if let Ok(mut p) = public.lock() {
                *p = st.key.public_key().as_ref().to_vec();
            }
            let _ = tx.send(r);
        }
        if let Some(tx) = close {
            if let Err(e) = st.checkpoint() {
                tracing::error!(error = %e, "final audit checkpoint failed");
            }
            let _ = tx.send(());
            return;
        }
    }
}

impl AuditWriter {
    /// Opens the log (recovering from a crash) and starts the writer thread.
    pub fn open(cfg: WriterConfig, key: Ed25519KeyPair) -> Result<Self, super::SetupError> {
        Self::open_with_clock(cfg, key, Arc::new(crate::clock::SystemClock))
    }

    /// Like [`AuditWriter::open`], with records stamped by `clock` when they are sequenced.
    pub fn open_with_clock(
        cfg: WriterConfig,
        key: Ed25519KeyPair,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Result<Self, super::SetupError> {
        let (st, opened) = State::open(cfg, key).map_err(super::SetupError::Log)?;
        let (done, ready) = std::sync::mpsc::sync_channel(1);
        let w = Self::start(
            st,
            opened,
            clock,
            Box::new(move |r| {
                let _ = done.send(r);
            }),
        )?;
        ready.recv().map_err(|_| AuditError::Closed)??;
        Ok(w)
    }

    /// Opens the chain of `cfg.node` in a database table (recovering its tail like a
    /// restart's newest segment) and starts the writer thread; `cfg.dir` is not used.
    pub async fn open_on_table(
        cfg: WriterConfig,
        key: Ed25519KeyPair,
        clock: Arc<dyn crate::clock::Clock>,
        table: Arc<dyn AuditTable>,
    ) -> Result<Self, super::SetupError> {
        let (st, opened) = State::open_table(cfg, key, table)
            .await
            .map_err(super::SetupError::Log)?;
        let (done, ready) = oneshot::channel();
        let w = Self::start(
            st,
            opened,
            clock,
            Box::new(move |r| {
                let _ = done.send(r);
            }),
        )?;
        ready.await.map_err(|_| AuditError::Closed)??;
        Ok(w)
    }

    /// Starts the writer thread, whose first write is the start's `recovery` record (written
    /// there, not here: a table's writes block on the runtime this may be called from);
    /// `ready` learns how it went.
    fn start(
        mut st: State,
        opened: Opened,
        clock: Arc<dyn crate::clock::Clock>,
        ready: Box<dyn FnOnce(Result<(), AuditError>) + Send>,
    ) -> Result<Self, super::SetupError> {
        st.clock = clock;
        let store = match st.log {
            Log::Files(_) => "files",
            Log::Table(_) => "postgres",
        };
        let deadline = st.cfg.write_deadline;
        let sink_cfg = st.cfg.sink.clone().map(|s| (s, st.cfg.sink_queue.max(1)));
        let truncated = opened.truncated;
        let sink_dropped = st.dropped.clone();
        if let Some((sink, queue)) = sink_cfg {
            let (stx, srx) = std::sync::mpsc::sync_channel(queue);
            let d = sink_dropped.clone();
            std::thread::Builder::new()
                .name("keygate-audit-sink".into())
                .spawn(move || sink_thread(sink, srx, d))
                .map_err(super::SetupError::Thread)?;
            st.sink = Some(stx);
        }
        // every start is recorded; a torn line that was cut is said so
        let mut rec = st.checkpoint_record();
        rec.kind = Kind::Recovery;
        rec.truncated_bytes = truncated;
        rec.reason = Some(match truncated {
            Some(n) => format!("writer reopened the log; truncated a torn last line of {n} bytes"),
            None => "writer opened the log".into(),
        });
        if let Some((range, why)) = &opened.unverified {
            rec.unverified = Some(*range);
            rec.reason = Some(format!(
                "{}; records {}..={} did not verify and were set aside, not signed: {why}",
                rec.reason.unwrap_or_default(),
                range[0],
                range[1]
            ));
            tracing::error!(
                first = range[0],
                last = range[1],
                why = %why,
                "audit log: records after the last seal did not verify; set aside in quarantine, never signed"
            );
        }
        if let Some(n) = truncated {
            tracing::warn!(
                bytes = n,
                "audit log: truncated a torn last line left by a crash"
            );
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(65_536);
        let healthy = Arc::new(AtomicBool::new(true));
        let written = Arc::new(AtomicU64::new(0));
        let (h, w) = (healthy.clone(), written.clone());
        let head = Arc::new(Mutex::new((st.seq, st.prev.clone())));
        let hd = head.clone();
        let public = Arc::new(Mutex::new(st.key.public_key().as_ref().to_vec()));
        let pk = public.clone();
        let thread = std::thread::Builder::new()
            .name("keygate-audit".into())
            .spawn(move || {
                let first = st.write(&mut [rec]).map(|_| ());
                let ok = first.is_ok();
                ready(first);
                if ok {
                    st.since_checkpoint += 1;
                    run(st, rx, h, w, hd, pk);
                }
            })
            .map_err(super::SetupError::Thread)?;
        Ok(Self {
            tx,
            healthy,
            deadline,
            thread: Mutex::new(Some(thread)),
            written,
            sink_dropped,
            head,
            public,
            store,
        })
    }

    /// Where the records are kept: `files` or `postgres`.
    pub fn store(&self) -> &'static str {
        self.store
    }

    /// The public key checkpoints are signed with now.
    pub fn public_key(&self) -> Vec<u8> {
        self.public.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Hands checkpoint signing over to the Ed25519 key `pkcs8` (a signed `key_rotation`
    /// record). Already in use: `Ok(false)`, nothing written.
    pub async fn rotate_key(&self, pkcs8: &[u8]) -> Result<bool, AuditError> {
        let key = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| AuditError::Io("not an Ed25519 PKCS#8 key".into()))?;
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::RotateKey(Box::new(key), tx))
            .map_err(|_| AuditError::Closed)?;
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(AuditError::Closed),
            Err(_) => Err(AuditError::Stalled),
        }
    }

    /// Appends `rec` and waits until it is durable; the caller must not answer before `Ok`.
    pub async fn append(&self, rec: Record) -> Result<u64, AuditError> {
        let (tx, rx) = oneshot::channel();
        match self.tx.try_send(Msg::Append(Box::new(rec), tx)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.healthy.store(false, Ordering::SeqCst);
                return Err(AuditError::Full);
            }
            Err(TrySendError::Disconnected(_)) => return Err(AuditError::Closed),
        }
        match tokio::time::timeout(self.deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(AuditError::Closed),
            Err(_) => {
                self.healthy.store(false, Ordering::SeqCst);
                Err(AuditError::Stalled)
            }
        }
    }

    /// Makes the writer thread sleep for `d`, as a hung disk would (tests of the deadline).
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn stall_for_test(&self, d: Duration) {
        let _ = self.tx.try_send(Msg::Stall(d));
    }

    /// Last sequence number and chain hash the writer has made durable (as of its last wake).
    pub fn head(&self) -> (u64, String) {
        self.head.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// False after a failed write, until a write succeeds again.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Writes the final checkpoint and stops the writer.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}
