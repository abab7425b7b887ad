//! The live progress line on stderr.

use std::time::{Duration, Instant};

use crate::load::config::LoadConfig;
use crate::load::expect::{percent, Expectations, Joined, SentCounts, Window};

/// The live progress line on stderr.
pub(crate) struct Progress {
    quiet: bool,
    last: Instant,
    last_bytes: u64,
    /// Publishers' counters at the previous line: packets sent since may still be in flight.
    last_sent: Option<SentCounts>,
}

impl Progress {
    pub(crate) fn new(quiet: bool) -> Self {
        Progress {
            quiet,
            last: Instant::now(),
            last_bytes: 0,
            last_sent: None,
        }
    }

    pub(crate) fn print(
        &mut self,
        joined: &[Joined],
        config: &LoadConfig,
        settled: Option<&(Instant, SentCounts)>,
        failures: usize,
        total: usize,
        last: bool,
    ) {
        if self.quiet || (!last && self.last.elapsed() < Duration::from_secs(1)) {
            return;
        }
        let (mut bytes, mut packets) = (0u64, 0u64);
        for j in joined {
            let t = j.client.received_totals();
            bytes += t.bytes;
            packets += t.packets;
        }
        // Loss so far, against what publishers had sent a second ago, once settled.
        let (mut expected, mut lost) = (0u64, 0u64);
        if let (Some((settled_at, at_settle)), Some(sent)) = (settled, &self.last_sent) {
            let expectations = Expectations::new(config, joined, Some(at_settle));
            let window = Window {
                settled_at: *settled_at,
                stopped_at: Instant::now(),
                freeze_threshold: Duration::MAX,
                origin: None,
            };
            for j in joined {
                if let Some(r) = j
                    .client
                    .with_received(|r| expectations.outcomes(j, r, sent, &window))
                {
                    expected += r.tracks.iter().filter_map(|t| t.expected).sum::<u64>();
                    lost += r.tracks.iter().filter_map(|t| t.lost).sum::<u64>();
                }
            }
        }
        self.last_sent = Some(SentCounts::of(joined));
        let secs = self.last.elapsed().as_secs_f64().max(0.001);
        let mbps = (bytes.saturating_sub(self.last_bytes)) as f64 * 8.0 / secs / 1e6;
        self.last = Instant::now();
        self.last_bytes = bytes;
        let connected = joined
            .iter()
            .filter(|j| !j.client.signaling_closed())
            .count();
        eprint!(
            "\rconnected {connected}/{total}  failed {failures}  receiving {mbps:7.2} Mbit/s  packets {packets}  loss {:.2}%   ",
            percent(lost, expected)
        );
        if last {
            eprintln!();
        }
    }
}
