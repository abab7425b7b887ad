//! Per-DownTrack forwarding decisions: keyframe gating and sequence/timestamp rewriting.
//!
//! Pure logic, no I/O, so the hard cases (wrap-around, reordering, a publisher that changes
//! SSRC, a restart after the subscriber fell behind) are unit-tested without sockets.
//!
//! Each DownTrack has its own sequence and timestamp space. On every (re)start the
//! outgoing sequence continues from the last one sent, so the subscriber sees one unbroken
//! stream whatever happened upstream; within a run, gaps upstream stay gaps downstream, so the
//! subscriber's loss detection (NACK, PLI) still works.

use std::time::Instant;

/// The header fields a forwarded packet is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub sequence_number: u16,
    pub timestamp: u32,
}

/// What the forwarder decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Forward(Rewritten),
    /// Dropped because the stream waits for a keyframe to (re)start.
    WaitingForKeyframe,
    /// Dropped because it is older than the start of the current run.
    TooOld,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    in_ssrc: u32,
    /// Sequence number of the packet the run started on (upstream numbering).
    start_in_seq: u16,
    seq_offset: u16,
    ts_offset: u32,
}

#[derive(Debug)]
pub struct Forwarder {
    /// Video waits for a keyframe; audio starts on any packet.
    gated: bool,
    clock_rate: u32,
    run: Option<Run>,
    last_out_seq: u16,
    last_out_ts: u32,
    last_out_at: Option<Instant>,
}

impl Forwarder {
    /// `initial_seq` and `initial_ts` seed the outgoing spaces (random in production, as
    /// RFC 3550 asks).
    pub fn new(gated: bool, clock_rate: u32, initial_seq: u16, initial_ts: u32) -> Self {
        Forwarder {
            gated,
            clock_rate: clock_rate.max(1),
            run: None,
            last_out_seq: initial_seq.wrapping_sub(1),
            last_out_ts: initial_ts,
            last_out_at: None,
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

    pub fn decide(
        &mut self,
        ssrc: u32,
        seq: u16,
        ts: u32,
        is_keyframe: bool,
        now: Instant,
    ) -> Decision {
        if self.run.is_some_and(|run| run.in_ssrc != ssrc) {
            // The publisher switched streams: its numbering restarts too.
            self.run = None;
        }
        let run = match self.run {
            Some(run) => run,
            None => {
                if self.gated && !is_keyframe {
                    return Decision::WaitingForKeyframe;
                }
                let out_seq = self.last_out_seq.wrapping_add(1);
                // Advance the timestamp by the wall time since the last packet sent, so that
                // the subscriber's jitter buffer sees time moving forward across the gap.
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
                    in_ssrc: ssrc,
                    start_in_seq: seq,
                    seq_offset: seq.wrapping_sub(out_seq),
                    ts_offset: ts.wrapping_sub(out_ts),
                };
                self.run = Some(run);
                run
            }
        };
        // Packets from before the run started (reordered) would land before the keyframe.
        if (seq.wrapping_sub(run.start_in_seq) as i16) < 0 {
            return Decision::TooOld;
        }
        let out = Rewritten {
            sequence_number: seq.wrapping_sub(run.seq_offset),
            timestamp: ts.wrapping_sub(run.ts_offset),
        };
        if (out.sequence_number.wrapping_sub(self.last_out_seq) as i16) > 0 {
            self.last_out_seq = out.sequence_number;
            self.last_out_ts = out.timestamp;
            self.last_out_at = Some(now);
        }
        Decision::Forward(out)
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
            Decision::WaitingForKeyframe
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
        assert_eq!(f.decide(1, 9, 0, false, now), Decision::TooOld);
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
            Decision::WaitingForKeyframe
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
        assert_eq!(f.decide(2, 7, 0, false, now), Decision::WaitingForKeyframe);
        let b = fwd(f.decide(2, 8, 0, true, now));
        assert_eq!(b.sequence_number, a.sequence_number.wrapping_add(1));
    }
}
