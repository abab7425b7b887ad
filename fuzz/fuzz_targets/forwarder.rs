//! The Forwarder's keyframe gating and sequence/timestamp rewriting, fed random packet
//! sequences: several SSRCs, in-order runs, jumps, duplicates, reordering, restarts, packets
//! that waited too long, time moving on.
//!
//! What must hold: an outgoing sequence number is never sent twice (on numbers the harness
//! extends itself from the 16-bit ones); within a run the rewrite is one fixed offset for
//! both sequence number and timestamp; every new run (after a restart, a new SSRC, an expired
//! packet, a numbering reset) continues at exactly one past the highest number sent, and its
//! timestamp moves forward; video starts only on a keyframe; a fresh packet from a new SSRC
//! that may start a run does.
#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use switchboard::media::forwarder::{Decision, Forwarder, Refused};
use switchboard::media::sequence::WINDOW;

const SSRCS: [u32; 3] = [0x1111, 0x2222, 0xdead_beef];
const MAX_AGE: Duration = Duration::from_millis(200);

fn u16_at(d: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([d[i], d[i + 1]])
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let gated = data[0] & 1 != 0;
    let clock_rate = [8_000, 16_000, 48_000, 90_000][usize::from(data[0] >> 1) % 4];
    let initial_seq = u16_at(data, 1);
    let initial_ts = u32::from_be_bytes([data[3], data[4], data[5], data[6]]);
    let mut f = Forwarder::new(gated, clock_rate, initial_seq, initial_ts);
    let t0 = Instant::now();
    let mut now = t0;
    // Upstream, per SSRC: the last sequence number and timestamp sent.
    let mut last_seq = [0u16; 3];
    let mut last_ts = [0u32; 3];
    // The forwarder's current SSRC, as the harness knows it.
    let mut in_ssrc: Option<u32> = None;
    // Outgoing, extended by the harness.
    let mut highest: Option<u64> = None;
    let mut ts_at_highest = initial_ts;
    let mut sent: HashSet<u64> = HashSet::new();
    // The current run's offsets: (out seq - in seq, out ts - in ts).
    let mut run: Option<(u16, u32)> = None;

    // FUZZ_TRACE=1 prints every decision (to read a crash).
    let trace = std::env::var_os("FUZZ_TRACE").is_some();
    for step in data[7..].chunks_exact(6).take(2000) {
        let op = step[0];
        let s = usize::from(step[1] % 3);
        let ssrc = SSRCS[s];
        now += Duration::from_millis(u64::from(step[2]) * 4);
        if op & 0xe0 == 0xe0 {
            f.restart();
            assert!(f.is_waiting());
            continue;
        }
        let seq = match op & 0x07 {
            0..=2 => last_seq[s].wrapping_add(1),
            3 => last_seq[s].wrapping_add(i16::from(step[3] as i8) as u16),
            4 => last_seq[s],
            5 => last_seq[s].wrapping_sub(u16::from(step[3] % 8)),
            _ => u16_at(step, 3),
        };
        let ts = match (op >> 3) & 0x03 {
            0 | 1 => last_ts[s].wrapping_add(clock_rate / 50),
            2 => last_ts[s],
            _ => u32::from(u16_at(step, 4)) << 8,
        };
        last_seq[s] = seq;
        last_ts[s] = ts;
        let keyframe = step[5] & 0x0f == 0;
        // Some packets waited in the queue, a few too long.
        let waited = Duration::from_millis(u64::from(step[5] >> 4) * 20);
        let arrived = now.checked_sub(waited).unwrap_or(now);
        let expired = waited > MAX_AGE;
        let was_waiting = f.is_waiting();
        let new_ssrc = in_ssrc != Some(ssrc);
        let decision = if op & 0x40 != 0 {
            f.decide_queued(ssrc, seq, ts, keyframe, arrived, now, MAX_AGE)
        } else {
            f.decide(ssrc, seq, ts, keyframe, now)
        };
        let expired = expired && op & 0x40 != 0;
        if trace {
            eprintln!(
                "ssrc {ssrc:x} seq {seq} ts {ts} key {keyframe} waited {waited:?} queued {} waiting {was_waiting} -> {decision:?}",
                op & 0x40 != 0
            );
        }
        if !expired {
            in_ssrc = Some(ssrc);
        }
        match decision {
            Decision::Forward(r) => {
                assert!(!expired);
                let ext = match highest {
                    None => {
                        assert_eq!(r.sequence_number, initial_seq, "the first packet sent");
                        (1u64 << 32) + u64::from(initial_seq)
                    }
                    Some(h) => {
                        let delta = i64::from(r.sequence_number.wrapping_sub(h as u16) as i16);
                        assert!(
                            delta > -(WINDOW as i64),
                            "sent {delta} behind the highest, beyond the window"
                        );
                        h.checked_add_signed(delta).expect("in range")
                    }
                };
                assert!(
                    sent.insert(ext),
                    "outgoing sequence number {ext} sent twice"
                );
                let offsets = (
                    r.sequence_number.wrapping_sub(seq),
                    r.timestamp.wrapping_sub(ts),
                );
                let continues = !was_waiting && !new_ssrc && run == Some(offsets);
                if !continues {
                    // A new run: one past the highest sent, time moving forward.
                    if let Some(h) = highest {
                        assert_eq!(ext, h + 1, "a new run continues the outgoing sequence");
                        let advance = r.timestamp.wrapping_sub(ts_at_highest);
                        assert!(
                            advance >= 1 && advance < 1 << 31,
                            "a new run's timestamp moves forward ({advance})"
                        );
                    }
                    if gated {
                        assert!(keyframe, "video starts on a keyframe");
                    }
                    run = Some(offsets);
                }
                if highest.is_none_or(|h| ext > h) {
                    highest = Some(ext);
                    ts_at_highest = r.timestamp;
                }
                assert!(!f.is_waiting());
            }
            Decision::Refuse(why) => {
                match why {
                    Refused::WaitingForKeyframe => {
                        assert!(gated && !keyframe, "{why:?}");
                        assert!(f.is_waiting());
                    }
                    Refused::Expired => {
                        assert!(expired, "expired without waiting too long");
                        assert!(f.is_waiting());
                    }
                    Refused::TooOld | Refused::Duplicate => assert!(!expired),
                }
                // A fresh packet of a new SSRC that may start a run always does.
                if new_ssrc && !expired {
                    assert!(gated && !keyframe, "a new SSRC's packet refused: {why:?}");
                }
            }
        }
    }
});
