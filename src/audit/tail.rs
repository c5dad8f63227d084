//! What a restart accepts of the newest segment's tail: the records after the last signed one
//! are kept only as far as a batch seal (or checkpoint) vouches for them and the durable head
//! (kept outside the audit directory) agrees; the rest is set aside, reported, never signed.
//! Pure: bytes in, decision out.
use super::record::{checkpoint_message, line_hash, seal_message, split_seal, Kind, Record};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// The restart's verdict on the newest segment.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TailCheck {
    /// Bytes of the segment that verified (the segment is cut back to this length).
    pub good_len: usize,
    /// Sequence number and line hash of the last line kept.
    pub last: Option<(u64, String)>,
    /// Lines set aside (each ending in a newline).
    pub quarantined: Vec<u8>,
    /// First and last sequence numbers that did not verify (set aside, or cut off: the head
    /// names records the log no longer holds).
    pub unverified: Option<[u64; 2]>,
    /// Why, for the recovery record and the operator's log.
    pub why: Option<String>,
}

/// The durable head a previous run recorded: `seq chain-hash`.
pub fn parse_head(text: &str) -> Option<(u64, String)> {
    let (seq, hash) = text.trim().split_once(' ')?;
    Some((seq.parse().ok()?, hash.to_string()))
}

fn verifies(key: &[u8], msg: &[u8], sig_b64: Option<&str>) -> bool {
    let Some(sig) = sig_b64.and_then(|s| B64.decode(s).ok()) else {
        return false;
    };
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, key)
        .verify(msg, &sig)
        .is_ok()
}

/// Checks `bytes` (complete lines of the newest segment) against `key` (the Ed25519 public key
/// the writer signs with now) and the `head` a previous run left; `seq_before` is the last
/// sequence number of the segments before this one (0 for the first).
pub fn check(bytes: &[u8], key: &[u8], head: Option<(u64, String)>, seq_before: u64) -> TailCheck {
    check_with(bytes, key, head, seq_before, true)
}

/// Like [`check`] for a log whose every batch is sealed by construction (a database table's
/// chain: one transaction per batch): lines no seal covers are never taken on, even in a log
/// with no seal at all, and there is no head file.
pub fn check_sealed(bytes: &[u8], key: &[u8], seq_before: u64) -> TailCheck {
    check_with(bytes, key, None, seq_before, false)
}

fn check_with(
    bytes: &[u8],
    key: &[u8],
    head: Option<(u64, String)>,
    seq_before: u64,
    allow_unsealed_log: bool,
) -> TailCheck {
    let mut lines: Vec<(usize, &[u8])> = Vec::new();
    let mut off = 0;
    for l in bytes.split_inclusive(|c| *c == b'\n') {
        lines.push((off, l.strip_suffix(b"\n").unwrap_or(l)));
        off += l.len();
    }
    let parsed: Vec<Option<Record>> = lines
        .iter()
        .map(|(_, l)| serde_json::from_slice(l).ok())
        .collect();
    let sealed_anywhere = lines.iter().any(|(_, l)| split_seal(l).is_some());
    // start after the last signed record (checkpoints are verified by `audit verify`)
    let start = parsed.iter().rposition(|r| {
        r.as_ref()
            .is_some_and(|r| matches!(r.kind, Kind::Checkpoint | Kind::KeyRotation))
    });
    let mut good = start;
    let mut why = None;
    let first = start.map(|s| s + 1).unwrap_or(0);
    for i in first..lines.len() {
        let Some(r) = &parsed[i] else {
            why = Some("a record does not parse".to_string());
            break;
        };
        if i > 0 {
            let prev_ok = parsed[i - 1].as_ref().is_some_and(|p| p.seq + 1 == r.seq)
                && r.prev == line_hash(lines[i - 1].1);
            if !prev_ok {
                why = Some(format!(
                    "record {} does not chain to its predecessor",
                    r.seq
                ));
                break;
            }
        }
        match r.kind {
            Kind::Checkpoint => {
                if verifies(
                    key,
                    &checkpoint_message(r.seq, &r.prev, &r.time),
                    r.sig.as_deref(),
                ) {
                    good = Some(i);
                } else {
                    why = Some(format!("checkpoint {} signature invalid", r.seq));
                    break;
                }
            }
            Kind::KeyRotation => good = Some(i),
            _ => {
                if let Some((body, sig)) = split_seal(lines[i].1) {
                    if verifies(
                        key,
                        &seal_message(r.seq, &r.prev, &line_hash(&body)),
                        Some(sig),
                    ) {
                        good = Some(i);
                    } else {
                        why = Some(format!("the seal of record {} does not verify", r.seq));
                        break;
                    }
                }
            }
        }
    }
    let legacy = allow_unsealed_log && head.is_none() && !sealed_anywhere;
    if legacy {
        // a log from a version without seals: nothing to check the tail against
        good = lines.len().checked_sub(1);
        why = None;
    }
    let keep = good.map(|g| g + 1).unwrap_or(0);
    let last = good.and_then(|g| parsed[g].as_ref().map(|r| (r.seq, line_hash(lines[g].1))));
    // nothing kept in this segment: the chain ended with the segments before it
    let last_seq = last.as_ref().map(|l| l.0).unwrap_or(seq_before);
    let mut out = TailCheck {
        good_len: lines.get(keep).map(|(o, _)| *o).unwrap_or(bytes.len()),
        last,
        ..Default::default()
    };
    if keep < lines.len() {
        out.quarantined = bytes[out.good_len..].to_vec();
        let to = parsed[keep..]
            .iter()
            .flatten()
            .map(|r| r.seq)
            .max()
            .unwrap_or(last_seq + 1)
            .max(last_seq + 1);
        out.unverified = Some([last_seq + 1, to]);
        out.why = Some(why.unwrap_or_else(|| {
            format!(
                "{} record(s) after seq {last_seq} carry no seal",
                lines.len() - keep
            )
        }));
    }
    if let Some((head_seq, _)) = head {
        if head_seq > last_seq {
            let to = out.unverified.map(|u| u[1]).unwrap_or(0).max(head_seq);
            out.unverified = Some([last_seq + 1, to]);
            let cut = format!(
                "the head written before the restart names seq {head_seq}, the log ends at {}",
                out.unverified.map(|u| u[0] - 1).unwrap_or(last_seq)
            );
            out.why = Some(match out.why {
                Some(w) => format!("{w}; {cut}"),
                None => cut,
            });
        }
    }
    out
}
