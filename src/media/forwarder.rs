//! Per-DownTrack forwarding decisions: keyframe gating and sequence/timestamp rewriting.
//!
//! Pure logic, no I/O, so the hard cases (wrap-around, reordering, duplicates, a publisher
//! that changes SSRC or restarts its numbering, a restart after the subscriber fell behind)
//! are unit-tested without sockets.
//!
//! Each DownTrack has its own sequence and timestamp space. On every (re)start the
//! outgoing sequence continues from the highest one sent, so the subscriber sees one unbroken
//! stream whatever happened upstream; within a run, gaps upstream stay gaps downstream, so the
//! subscriber's loss detection (NACK, PLI) still works. Every comparison is made on extended
//! sequence numbers, so a stream may run for any length of time.

use std::time::Instant;

use crate::media::sequence::{Seen, SeenWindow, SeqUnwrapper};

/// The header fields a forwarded packet is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub sequence_number: u16,
    pub timestamp: u32,
}

/// Why the forwarder refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refused {
    /// The stream waits for a keyframe to (re)start.
    WaitingForKeyframe,
    /// Older than the start of the current run, or than anything still told apart.
    TooOld,
    /// Already forwarded.
    Duplicate,
    /// Waited in the DownTrack's queue longer than its age limit: the subscriber fell behind,
    /// and skips ahead to the next keyframe rather than lag.
    Expired,
}

impl Refused {
    /// The label `/metrics` counts it under.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::WaitingForKeyframe => "waiting_for_keyframe",
            Refused::TooOld => "too_old",
            Refused::Duplicate => "duplicate",
            Refused::Expired => "expired",
        }
    }
}

/// What the forwarder decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Forward(Rewritten),
    Refuse(Refused),
}

/// This many refused-as-old packets in a row mean the publisher restarted its numbering on
/// the same SSRC: the forwarder starts over rather than refuse the stream forever.
const RESET_AFTER_OLD_IN_A_ROW: u32 = 64;

/// The furthest one packet may move the outgoing sequence ahead: a subscriber reads a jump of
/// half the 16-bit space or more as one backwards.
const MAX_OUT_JUMP: u64 = (1 << 15) - 1;

/// Padding goes in only when this many numbers up to the highest sent were all sent.
const PAD_AFTER_COMPLETE: u32 = 16;

#[derive(Debug, Clone, Copy)]
struct Run {
    /// Extended upstream number of the packet the run started on.
    start_in: u64,
    /// Extended outgoing number minus extended upstream number.
    seq_offset: i64,
    ts_offset: u32,
}

#[derive(Debug)]
pub struct Forwarder {
    /// Video waits for a keyframe; audio starts on any packet.
    gated: bool,
    clock_rate: u32,
    in_ssrc: Option<u32>,
    in_seq: SeqUnwrapper,
    run: Option<Run>,
    /// Highest extended outgoing sequence number sent.
    out_highest: u64,
    out_seen: SeenWindow,
    last_out_ts: u32,
    last_out_at: Option<Instant>,
    old_in_a_row: u32,
}

impl Forwarder {
    /// `initial_seq` and `initial_ts` seed the outgoing spaces (random in production, as
    /// RFC 3550 asks).
    pub fn new(gated: bool, clock_rate: u32, initial_seq: u16, initial_ts: u32) -> Self {
        Forwarder {
            gated,
            clock_rate: clock_rate.max(1),
            in_ssrc: None,
            in_seq: SeqUnwrapper::default(),
            run: None,
            // One cycle up, so the first packet sent is `initial_seq`.
            out_highest: (1 << 16) + u64::from(initial_seq) - 1,
            out_seen: SeenWindow::default(),
            last_out_ts: initial_ts,
            last_out_at: None,
            old_in_a_row: 0,
        }
    }

    /// True while the forwarder drops everything until a keyframe.
    pub fn is_waiting(&self) -> bool {
        self.run.is_none()
    }

    /// Stops the current run: nothing more is forwarded until the next keyframe (video) or
    /// packet (audio). Called when packets were lost on the way to the subscriber.
    pub fn restart(&mut self) {
        self.run = None;
    }

    /// [`Forwarder::decide`] for a packet that waited in a queue since `arrived`: one older
    /// than `max_age` is refused and the stream restarts on the next keyframe (the caller asks
    /// for one), so a subscriber that fell behind skips ahead instead of lagging.
    #[allow(clippy::too_many_arguments)]
    pub fn decide_queued(
        &mut self,
        ssrc: u32,
        seq: u16,
        ts: u32,
        is_keyframe: bool,
        arrived: Instant,
        now: Instant,
        max_age: std::time::Duration,
    ) -> Decision {
        if now.saturating_duration_since(arrived) > max_age {
            // Keep the numbering of what arrives meanwhile: extended numbers stay exact.
            if self.in_ssrc == Some(ssrc) {
                self.in_seq.extend(seq);
            }
            self.restart();
            return Decision::Refuse(Refused::Expired);
        }
        self.decide(ssrc, seq, ts, is_keyframe, now)
    }

    pub fn decide(
        &mut self,
        ssrc: u32,
        seq: u16,
        ts: u32,
        is_keyframe: bool,
        now: Instant,
    ) -> Decision {
        if self.in_ssrc != Some(ssrc) {
            // The publisher switched streams: its numbering restarts too.
            self.in_ssrc = Some(ssrc);
            self.start_over();
        }
        let ext = self.in_seq.extend(seq);
        let mut run = match self.run {
            Some(run) => run,
            None => {
                if self.gated && !is_keyframe {
                    return Decision::Refuse(Refused::WaitingForKeyframe);
                }
                self.start_run(ext, ts, now)
            }
        };
        if ext < run.start_in {
            // From before the packet the run started on (reordered): it would land before
            // the keyframe.
            return self.refuse_old(seq, ts, is_keyframe, now);
        }
        let mut out = ext.saturating_add_signed(run.seq_offset);
        if out > self.out_highest + MAX_OUT_JUMP {
            // Half the sequence space or more past what the subscriber has: it would read the
            // jump as going backwards. Upstream gets here by leaping far ahead of a run that
            // started behind its highest number (on a late packet after a restart). Start a
            // new run on this packet instead.
            self.run = None;
            if self.gated && !is_keyframe {
                return Decision::Refuse(Refused::WaitingForKeyframe);
            }
            run = self.start_run(ext, ts, now);
            out = ext.saturating_add_signed(run.seq_offset);
        }
        match self.out_seen.insert(out) {
            Seen::New => {}
            Seen::Duplicate => return Decision::Refuse(Refused::Duplicate),
            Seen::OutOfWindow => return self.refuse_old(seq, ts, is_keyframe, now),
        }
        self.old_in_a_row = 0;
        let timestamp = ts.wrapping_sub(run.ts_offset);
        if out > self.out_highest {
            self.out_highest = out;
            self.last_out_ts = timestamp;
            self.last_out_at = Some(now);
        }
        Decision::Forward(Rewritten {
            sequence_number: out as u16,
            timestamp,
        })
    }

    /// The numbers of a packet inserted into the running stream (padding), after the highest
    /// sent: what upstream sends next moves up by one to make room. `None` while waiting for
    /// a keyframe, or while a packet below the highest is missing (it may still arrive, or be
    /// retransmitted, under the number it was given).
    pub fn pad(&mut self, now: Instant) -> Option<Rewritten> {
        let run = self.run.as_mut()?;
        if !self.out_seen.recent_complete(PAD_AFTER_COMPLETE) {
            return None;
        }
        let out = self.out_highest + 1;
        run.seq_offset += 1;
        self.out_seen.insert(out);
        self.out_highest = out;
        self.last_out_at = Some(now);
        Some(Rewritten {
            sequence_number: out as u16,
            timestamp: self.last_out_ts,
        })
    }

    fn start_run(&mut self, ext: u64, ts: u32, now: Instant) -> Run {
        let out = self.out_highest + 1;
        // Advance the timestamp by the wall time since the last packet sent, so that the
        // subscriber's jitter buffer sees time moving forward across the gap.
        let elapsed_ticks = self
            .last_out_at
            .map(|at| {
                let secs = now.saturating_duration_since(at).as_secs_f64();
                (secs * f64::from(self.clock_rate)) as u32
            })
            .unwrap_or(0)
            .max(1);
        let out_ts = self.last_out_ts.wrapping_add(elapsed_ticks);
        let run = Run {
            start_in: ext,
            seq_offset: out as i64 - ext as i64,
            ts_offset: ts.wrapping_sub(out_ts),
        };
        self.run = Some(run);
        run
    }

    fn start_over(&mut self) {
        self.in_seq.reset();
        self.run = None;
        self.old_in_a_row = 0;
    }

    fn refuse_old(&mut self, seq: u16, ts: u32, is_keyframe: bool, now: Instant) -> Decision {
        self.old_in_a_row += 1;
        if self.old_in_a_row < RESET_AFTER_OLD_IN_A_ROW {
            return Decision::Refuse(Refused::TooOld);
        }
        // Nothing has been newer for a while: the upstream numbering jumped back.
        self.start_over();
        match self.in_ssrc {
            Some(ssrc) => self.decide(ssrc, seq, ts, is_keyframe, now),
            None => Decision::Refuse(Refused::TooOld),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fwd(d: Decision) -> Rewritten {
        match d {
            Decision::Forward(r) => r,
            other => panic!("expected Forward, got {other:?}"),
        }
    }

    #[test]
    fn video_waits_for_a_keyframe_then_rewrites_into_its_own_space() {
        let now = Instant::now();
        let mut f = Forwarder::new(true, 90_000, 1000, 5000);
        assert!(f.is_waiting());
        assert_eq!(
            f.decide(7, 40, 900, false, now),
            Decision::Refuse(Refused::WaitingForKeyframe)
        );
        let first = fwd(f.decide(7, 41, 3000, true, now));
        assert_eq!(first.sequence_number, 1000);
        let next = fwd(f.decide(7, 42, 6000, false, now));
        assert_eq!(next.sequence_number, 1001);
        assert_eq!(next.timestamp.wrapping_sub(first.timestamp), 3000);
        assert!(!f.is_waiting());
    }

    #[test]
    fn audio_starts_on_any_packet() {
        let mut f = Forwarder::new(false, 48_000, 1, 1);
        assert!(matches!(
            f.decide(1, 500, 960, false, Instant::now()),
            Decision::Forward(_)
        ));
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        let now = Instant::now();
        let mut f = Forwarder::new(true, 90_000, 65534, 0);
        let a = fwd(f.decide(9, 65535, 0, true, now));
        let b = fwd(f.decide(9, 0, 3000, false, now));
        let c = fwd(f.decide(9, 1, 6000, false, now));
        assert_eq!(
            [a.sequence_number, b.sequence_number, c.sequence_number],
            [65534, 65535, 0]
        );
    }

    #[test]
    fn upstream_gaps_stay_gaps_and_reordered_packets_keep_their_place() {
        let now = Instant::now();
        let mut f = Forwarder::new(true, 90_000, 100, 0);
        fwd(f.decide(1, 10, 0, true, now));
        let late = fwd(f.decide(1, 13, 0, false, now));
        assert_eq!(late.sequence_number, 103);
        let reordered = fwd(f.decide(1, 12, 0, false, now));
        assert_eq!(reordered.sequence_number, 102);
        // Older than the keyframe that started the run.
        assert_eq!(
            f.decide(1, 9, 0, false, now),
            Decision::Refuse(Refused::TooOld)
        );
    }

    #[test]
    fn a_restart_continues_the_outgoing_sequence_and_advances_time() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(true, 90_000, 0, 0);
        fwd(f.decide(1, 100, 1_000, true, t0));
        let before = fwd(f.decide(1, 101, 4_000, false, t0));
        f.restart();
        assert_eq!(
            f.decide(1, 150, 90_000, false, t0),
            Decision::Refuse(Refused::WaitingForKeyframe)
        );
        let t1 = t0 + Duration::from_millis(100);
        let after = fwd(f.decide(1, 151, 93_000, true, t1));
        assert_eq!(
            after.sequence_number,
            before.sequence_number.wrapping_add(1)
        );
        // 100 ms at 90 kHz.
        assert_eq!(after.timestamp.wrapping_sub(before.timestamp), 9_000);
    }

    #[test]
    fn a_new_publisher_ssrc_waits_for_its_keyframe_and_continues_the_sequence() {
        let now = Instant::now();
        let mut f = Forwarder::new(true, 90_000, 0, 0);
        let a = fwd(f.decide(1, 100, 0, true, now));
        assert_eq!(
            f.decide(2, 7, 0, false, now),
            Decision::Refuse(Refused::WaitingForKeyframe)
        );
        let b = fwd(f.decide(2, 8, 0, true, now));
        assert_eq!(b.sequence_number, a.sequence_number.wrapping_add(1));
    }

    /// A simulated upstream over 200,000 packets (three wraps): reordering, duplicates,
    /// losses, and a restart that falls across a wrap. The subscriber must get every packet
    /// forwarded at most once, each run in upstream's order and spacing, and the outgoing
    /// sequence must continue without a hole across the restart.
    #[test]
    fn two_hundred_thousand_packets_with_wraps_reordering_duplicates_and_a_restart() {
        use rand::{Rng, SeedableRng};
        use std::collections::{BTreeMap, HashMap};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let start_seq = 60_000u16;
        let total = 200_000u64;
        let is_keyframe = |n: u64| n.is_multiple_of(1000);
        // Upstream order: mostly in order, with local swaps, duplicates and a few losses.
        let mut upstream: Vec<u64> = (0..total).collect();
        for i in 0..upstream.len() - 3 {
            if rng.random_ratio(1, 50) {
                upstream.swap(i, i + rng.random_range(1..=3));
            }
        }
        let mut sent = Vec::with_capacity(upstream.len() * 2);
        for n in upstream {
            if rng.random_ratio(1, 1000) && !is_keyframe(n) {
                continue; // lost upstream
            }
            sent.push(n);
            if rng.random_ratio(1, 200) {
                sent.push(n); // duplicated upstream
            }
        }
        // Upstream number 136,606 is sequence number 65,534: the restart straddles a wrap.
        let restart_at = 136_606u64;
        assert_eq!(start_seq.wrapping_add(restart_at as u16), 65_534);
        let mut f = Forwarder::new(true, 90_000, 65_000, 0);
        let mut run = 0;
        // run -> upstream number -> outgoing sequence number
        let mut runs: Vec<BTreeMap<u64, u16>> = vec![BTreeMap::new()];
        let mut refused: HashMap<Refused, u32> = HashMap::new();
        for n in sent {
            if run == 0 && n >= restart_at {
                f.restart();
                run = 1;
                runs.push(BTreeMap::new());
            }
            let seq = start_seq.wrapping_add(n as u16);
            let now = t0 + std::time::Duration::from_micros(n * 300);
            match f.decide(42, seq, (n * 300) as u32, is_keyframe(n), now) {
                Decision::Forward(r) => {
                    let fresh = runs.iter().all(|r| !r.contains_key(&n));
                    assert!(fresh, "packet {n} forwarded twice");
                    runs[run].insert(n, r.sequence_number);
                }
                Decision::Refuse(why) => *refused.entry(why).or_insert(0) += 1,
            }
        }
        assert_eq!(runs.len(), 2);
        assert!(refused[&Refused::Duplicate] > 500, "{refused:?}");
        assert!(refused[&Refused::WaitingForKeyframe] > 100, "{refused:?}");
        for packets in &runs {
            let mut it = packets.iter();
            let (&n0, &s0) = it.next().expect("a run forwarded something");
            assert!(is_keyframe(n0), "a run starts on a keyframe, not {n0}");
            for (&n, &s) in it {
                assert_eq!(s, s0.wrapping_add((n - n0) as u16), "packet {n}");
            }
        }
        let (_, &last_of_first) = runs[0].iter().next_back().unwrap();
        let (_, &first_of_second) = runs[1].iter().next().unwrap();
        assert_eq!(first_of_second, last_of_first.wrapping_add(1));
        assert_eq!(*runs[0].values().next().unwrap(), 65_000);
        // Everything from each run's keyframe on that arrived at all went through.
        let forwarded: usize = runs.iter().map(BTreeMap::len).sum();
        assert!(forwarded as u64 > total - 1000 - total / 500, "{forwarded}");
    }

    #[test]
    fn a_packet_that_waited_too_long_restarts_the_stream_on_a_keyframe() {
        let t0 = Instant::now();
        let max_age = Duration::from_millis(200);
        let mut f = Forwarder::new(true, 90_000, 500, 0);
        let at = |ms| t0 + Duration::from_millis(ms);
        let first = fwd(f.decide_queued(3, 10, 0, true, at(0), at(5), max_age));
        fwd(f.decide_queued(3, 11, 0, false, at(10), at(200), max_age));
        // The subscriber stalled: this one waited 250 ms.
        assert_eq!(
            f.decide_queued(3, 12, 0, false, at(20), at(270), max_age),
            Decision::Refuse(Refused::Expired)
        );
        assert!(f.is_waiting());
        // Fresh again, but a delta frame: it waits for the keyframe the caller asked for.
        assert_eq!(
            f.decide_queued(3, 13, 0, false, at(300), at(301), max_age),
            Decision::Refuse(Refused::WaitingForKeyframe)
        );
        let resumed = fwd(f.decide_queued(3, 14, 0, true, at(310), at(311), max_age));
        assert_eq!(
            resumed.sequence_number,
            first.sequence_number.wrapping_add(2),
            "the outgoing sequence continues without a hole"
        );
    }

    /// Found by the `forwarder` fuzz target: a run that starts on a late packet, far behind
    /// the highest upstream number, then a leap ahead of that highest. Kept as one run, the
    /// subscriber's sequence would jump 42,000 ahead, which it reads as 23,536 back.
    #[test]
    fn the_outgoing_sequence_never_leaps_half_the_space() {
        let now = Instant::now();
        for gated in [false, true] {
            let mut f = Forwarder::new(gated, 48_000, 100, 0);
            let a = fwd(f.decide(1, 20_000, 0, true, now));
            f.restart();
            // Late by 15,000 packets: older than the highest, but it may start a run.
            let b = fwd(f.decide(1, 5_000, 960, true, now));
            assert_eq!(b.sequence_number, a.sequence_number.wrapping_add(1));
            // 27,000 past the highest upstream, 42,000 past where this run started.
            let leap = f.decide(1, 47_000, 1_920, false, now);
            if gated {
                assert_eq!(leap, Decision::Refuse(Refused::WaitingForKeyframe));
                assert!(f.is_waiting());
                let c = fwd(f.decide(1, 47_001, 2_880, true, now));
                assert_eq!(c.sequence_number, b.sequence_number.wrapping_add(1));
            } else {
                let c = fwd(leap);
                assert_eq!(c.sequence_number, b.sequence_number.wrapping_add(1));
                let d = fwd(f.decide(1, 47_001, 2_880, false, now));
                assert_eq!(d.sequence_number, c.sequence_number.wrapping_add(1));
            }
        }
    }

    #[test]
    fn duplicates_are_refused_and_late_packets_keep_their_place_after_a_wrap() {
        let now = Instant::now();
        let mut f = Forwarder::new(false, 48_000, 10, 0);
        let a = fwd(f.decide(5, 65_534, 0, false, now));
        let c = fwd(f.decide(5, 0, 0, false, now));
        let b = fwd(f.decide(5, 65_535, 0, false, now));
        assert_eq!(
            [a.sequence_number, b.sequence_number, c.sequence_number],
            [10, 11, 12]
        );
        assert_eq!(
            f.decide(5, 0, 0, false, now),
            Decision::Refuse(Refused::Duplicate)
        );
        assert_eq!(
            f.decide(5, 65_535, 0, false, now),
            Decision::Refuse(Refused::Duplicate)
        );
    }

    #[test]
    fn a_publisher_that_restarts_its_numbering_is_followed_after_a_short_while() {
        let now = Instant::now();
        let mut f = Forwarder::new(false, 48_000, 0, 0);
        let mut last = 0;
        for seq in 30_000..30_100u16 {
            last = fwd(f.decide(9, seq, 0, false, now)).sequence_number;
        }
        // Same SSRC, numbering back at 1,000: older than anything, for a while.
        let mut refused = 0;
        let mut resumed = None;
        for seq in 1_000..1_200u16 {
            match f.decide(9, seq, 0, false, now) {
                Decision::Refuse(Refused::TooOld) => refused += 1,
                Decision::Forward(r) => {
                    resumed.get_or_insert(r.sequence_number);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(refused, RESET_AFTER_OLD_IN_A_ROW - 1);
        assert_eq!(resumed, Some(last.wrapping_add(1)));
    }

    #[test]
    fn padding_takes_the_next_number_and_upstream_moves_up_past_a_wrap() {
        let now = Instant::now();
        let mut f = Forwarder::new(true, 90_000, 65_500, 0);
        assert_eq!(f.pad(now), None, "nothing to pad before a keyframe");
        let mut last = Rewritten {
            sequence_number: 0,
            timestamp: 0,
        };
        for seq in 100..120u16 {
            last = fwd(f.decide(3, seq, 9000, seq == 100, now));
        }
        let mut expected = last.sequence_number;
        // Hundreds of padding packets, far past the 16-bit wrap of the outgoing numbers.
        for _ in 0..200 {
            expected = expected.wrapping_add(1);
            let pad = f.pad(now).expect("a complete stream takes padding");
            assert_eq!(pad.sequence_number, expected);
            assert_eq!(
                pad.timestamp, last.timestamp,
                "padding carries the last frame's time"
            );
        }
        let next = fwd(f.decide(3, 120, 12_000, false, now));
        assert_eq!(next.sequence_number, expected.wrapping_add(1));
        // A gap upstream (121 missing) stops padding until it is far enough behind.
        fwd(f.decide(3, 122, 12_000, false, now));
        assert_eq!(f.pad(now), None, "121 may still come under its number");
        let late = fwd(f.decide(3, 121, 12_000, false, now));
        assert_eq!(late.sequence_number, expected.wrapping_add(2));
        assert!(f.pad(now).is_some());
    }
}
