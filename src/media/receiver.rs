//! Receiver: reads one published track's RTP and fans it out to every DownTrack.
//!
//! The fan-out takes no lock and awaits nothing: the set of sinks is an `ArcSwap` swapped on
//! subscribe and unsubscribe (copy-on-write), and each sink is a bounded queue filled with
//! `try_send`. The only allocation per packet is the one `Arc` the sinks share. A sink whose
//! queue is full drops the packet, counts it and marks itself for a resync on the next
//! keyframe, so a slow subscriber never stalls the publisher's track or the other subscribers.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, Instrument};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use crate::media::extensions::{Carried, ExtensionIds};
use crate::media::keyframe::VideoCodec;
use crate::metrics::Metrics;
use crate::signal::protocol::TrackKind;

/// One RTP packet as read from the publisher, shared by every DownTrack.
#[derive(Debug)]
pub struct ForwardedPacket {
    /// The publisher's packet, its header extensions stripped (their ids are the
    /// publisher's); what is forwarded of them is in `carried`.
    pub packet: rtp::Packet,
    pub carried: Carried,
    pub is_keyframe: bool,
    /// When the Receiver took it: a DownTrack drops what waited too long.
    pub arrived: Instant,
}

/// The Receiver's handle on one DownTrack's queue.
pub struct DownTrackSink {
    pub subscriber_id: String,
    tx: mpsc::Sender<Arc<ForwardedPacket>>,
    /// Set when a packet was dropped or the subscriber's transport (re)connected: the
    /// DownTrack restarts on the next keyframe.
    resync: AtomicBool,
    dropped: AtomicU64,
}

impl DownTrackSink {
    pub fn new(
        subscriber_id: String,
        capacity: usize,
    ) -> (Arc<Self>, mpsc::Receiver<Arc<ForwardedPacket>>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let sink = Arc::new(DownTrackSink {
            subscriber_id,
            tx,
            resync: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        (sink, rx)
    }

    /// Asks the DownTrack to restart on the next keyframe.
    pub fn request_resync(&self) {
        self.resync.store(true, Ordering::Release);
    }

    /// Takes the resync request, if any.
    pub fn take_resync(&self) -> bool {
        self.resync.swap(false, Ordering::AcqRel)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Static facts about the published track.
#[derive(Debug, Clone)]
pub struct TrackMeta {
    pub publisher_id: String,
    pub track_id: String,
    pub kind: TrackKind,
    pub codec: rtc::rtp_transceiver::rtp_sender::RTCRtpCodec,
    /// The publisher's ids for the extensions forwarded to subscribers.
    pub extensions: ExtensionIds,
}

pub struct Receiver {
    pub meta: TrackMeta,
    video_codec: Option<VideoCodec>,
    sinks: ArcSwap<Vec<Arc<DownTrackSink>>>,
    keyframe_wanted: Notify,
    keyframe_urgent: Notify,
    media_ssrc: AtomicU32,
    /// Test-only fault injection: drop every Nth packet (0: never).
    fault_drop_every: AtomicU32,
    fault_count: AtomicU32,
    metrics: Arc<Metrics>,
}

impl Receiver {
    pub fn new(meta: TrackMeta, metrics: Arc<Metrics>) -> Arc<Self> {
        Metrics::inc(&metrics.receivers);
        let video_codec = match meta.kind {
            TrackKind::Video => Some(VideoCodec::from_mime(&meta.codec.mime_type)),
            TrackKind::Audio => None,
        };
        Arc::new(Receiver {
            meta,
            video_codec,
            sinks: ArcSwap::from_pointee(Vec::new()),
            keyframe_wanted: Notify::new(),
            keyframe_urgent: Notify::new(),
            media_ssrc: AtomicU32::new(0),
            fault_drop_every: AtomicU32::new(0),
            fault_count: AtomicU32::new(0),
            metrics,
        })
    }

    /// Makes the Receiver drop every `n`th packet: only tests break the server on purpose.
    pub fn set_fault_drop_every(&self, n: Option<u32>) {
        self.fault_drop_every
            .store(n.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn is_video(&self) -> bool {
        self.video_codec.is_some()
    }

    pub fn add_sink(&self, sink: Arc<DownTrackSink>) {
        self.sinks.rcu(|sinks| {
            let mut next = Vec::with_capacity(sinks.len() + 1);
            next.extend(sinks.iter().cloned());
            next.push(sink.clone());
            next
        });
    }

    /// Removes every sink of one subscriber; its DownTracks' queues close with them.
    pub fn remove_subscriber(&self, subscriber_id: &str) {
        self.sinks.rcu(|sinks| {
            sinks
                .iter()
                .filter(|s| s.subscriber_id != subscriber_id)
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    pub fn remove_sink(&self, sink: &Arc<DownTrackSink>) {
        self.sinks.rcu(|sinks| {
            sinks
                .iter()
                .filter(|s| !Arc::ptr_eq(s, sink))
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    pub fn sink_count(&self) -> usize {
        self.sinks.load().len()
    }

    /// Asks the publisher for a keyframe. Requests are coalesced and rate-limited by the
    /// keyframe task, so callers may ask as often as they like.
    pub fn request_keyframe(&self) {
        if self.video_codec.is_some() {
            self.keyframe_wanted.notify_one();
        }
    }

    /// Asks the publisher for a keyframe for a subscriber that has nothing yet (it joined, or
    /// its transport just came up): sent at once unless one went out a moment ago, whose
    /// keyframe will serve it too.
    pub fn request_keyframe_now(&self) {
        if self.video_codec.is_some() {
            self.keyframe_urgent.notify_one();
        }
    }

    /// Reads the publisher's track until it ends; then calls `on_end`.
    pub fn spawn(
        self: &Arc<Self>,
        track: Arc<dyn TrackRemote>,
        pli_interval: Duration,
        on_end: impl FnOnce() + Send + 'static,
    ) {
        let span = tracing::info_span!(
            "receiver",
            participant = %self.meta.publisher_id,
            track = %self.meta.track_id
        );
        let keyframes = tokio::spawn(
            self.clone()
                .request_keyframes(track.clone(), pli_interval)
                .instrument(span.clone()),
        );
        let this = self.clone();
        tokio::spawn(
            async move {
                this.pump(track).await;
                keyframes.abort();
                // Closing the queues ends the DownTracks' writers.
                this.sinks.store(Arc::new(Vec::new()));
                debug!("track ended");
                on_end();
            }
            .instrument(span),
        );
    }

    async fn pump(&self, track: Arc<dyn TrackRemote>) {
        while let Some(event) = track.poll().await {
            match event {
                TrackRemoteEvent::OnRtpPacket(packet) => self.fan_out(packet),
                TrackRemoteEvent::OnEnded => break,
                _ => {}
            }
        }
    }

    /// The hot path: one packet to every DownTrack.
    pub fn fan_out(&self, mut packet: rtp::Packet) {
        Metrics::add(&self.metrics.packets_in, 1);
        Metrics::add(&self.metrics.bytes_in, packet.payload.len() as u64);
        let every = self.fault_drop_every.load(Ordering::Relaxed);
        if every != 0 && self.fault_count.fetch_add(1, Ordering::Relaxed) % every == every - 1 {
            return;
        }
        self.media_ssrc.store(packet.header.ssrc, Ordering::Relaxed);
        // Extension ids are negotiated per peer connection: the publisher's mean nothing to
        // a subscriber. Keep what is forwarded by URI; each DownTrack writes its own ids.
        let carried = Carried::read(&packet.header, &self.meta.extensions);
        packet.header.extension = false;
        packet.header.extension_profile = 0;
        packet.header.extensions.clear();
        packet.header.extensions_padding = 0;
        let is_keyframe = match self.video_codec {
            Some(codec) => codec.is_keyframe(&packet.payload),
            None => true,
        };
        let shared = Arc::new(ForwardedPacket {
            packet,
            carried,
            is_keyframe,
            arrived: Instant::now(),
        });
        for sink in self.sinks.load().iter() {
            if sink.tx.try_send(shared.clone()).is_err() {
                sink.dropped.fetch_add(1, Ordering::Relaxed);
                sink.request_resync();
                Metrics::add(&self.metrics.dropped.queue_full, 1);
            }
        }
    }

    async fn request_keyframes(self: Arc<Self>, track: Arc<dyn TrackRemote>, interval: Duration) {
        let mut last_sent: Option<Instant> = None;
        loop {
            let mut urgent = tokio::select! {
                _ = self.keyframe_wanted.notified() => false,
                _ = self.keyframe_urgent.notified() => true,
            };
            // Later requests are coalesced: at most one PLI per interval, or per
            // URGENT_PLI_GAP for a subscriber that has nothing to show yet.
            loop {
                let gap = if urgent { URGENT_PLI_GAP } else { interval };
                let Some(ready) = last_sent.map(|at| at + gap) else {
                    break;
                };
                if Instant::now() >= ready {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(ready.into()) => break,
                    _ = self.keyframe_urgent.notified() => urgent = true,
                }
            }
            let media_ssrc = self.media_ssrc.load(Ordering::Relaxed);
            if media_ssrc == 0 {
                continue;
            }
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            };
            if track.write_rtcp(vec![Box::new(pli)]).await.is_err() {
                return;
            }
            last_sent = Some(Instant::now());
            Metrics::add(&self.metrics.plis_sent, 1);
        }
    }
}

/// A PLI sent this recently has a keyframe on its way: a new subscriber waits for that one.
const URGENT_PLI_GAP: Duration = Duration::from_millis(100);

impl Drop for Receiver {
    fn drop(&mut self) {
        Metrics::dec(&self.metrics.receivers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;

    fn receiver(metrics: Arc<Metrics>) -> Arc<Receiver> {
        Receiver::new(
            TrackMeta {
                publisher_id: "p".into(),
                track_id: "t".into(),
                kind: TrackKind::Video,
                codec: RTCRtpCodec {
                    mime_type: "video/VP8".into(),
                    clock_rate: 90_000,
                    ..Default::default()
                },
                extensions: ExtensionIds::default(),
            },
            metrics,
        )
    }

    fn packet(seq: u16) -> rtp::Packet {
        let mut p = rtp::Packet::default();
        p.header.sequence_number = seq;
        p.header.extension = true;
        p.header.extensions.push(rtp::header::Extension {
            id: 3,
            payload: bytes::Bytes::from_static(&[1, 2]),
        });
        p.payload = bytes::Bytes::from_static(&[0x10, 0x00, 0x9d]);
        p
    }

    #[test]
    fn a_stuck_subscriber_drops_while_the_others_get_everything() {
        let metrics = Arc::new(Metrics::default());
        let receiver = receiver(metrics.clone());
        let (stuck, _stuck_rx) = DownTrackSink::new("slow".into(), 4);
        let (healthy, mut healthy_rx) = DownTrackSink::new("fast".into(), 4);
        receiver.add_sink(stuck.clone());
        receiver.add_sink(healthy.clone());
        let mut delivered = 0;
        for seq in 0..100 {
            // Never blocks, whatever the stuck queue holds.
            receiver.fan_out(packet(seq));
            while let Ok(p) = healthy_rx.try_recv() {
                assert!(
                    !p.packet.header.extension,
                    "publisher extensions are stripped"
                );
                assert!(p.is_keyframe);
                delivered += 1;
            }
        }
        assert_eq!(delivered, 100);
        assert_eq!(healthy.dropped(), 0);
        assert_eq!(stuck.dropped(), 96);
        assert!(
            stuck.take_resync(),
            "the stuck DownTrack restarts on a keyframe"
        );
        assert_eq!(metrics.snapshot().dropped.queue_full, 96);
        assert_eq!(metrics.snapshot().packets_in, 100);
    }

    #[test]
    fn subscribers_come_and_go_without_touching_the_others() {
        let receiver = receiver(Arc::new(Metrics::default()));
        let (a, _a_rx) = DownTrackSink::new("a".into(), 4);
        let (b1, _b1_rx) = DownTrackSink::new("b".into(), 4);
        let (b2, _b2_rx) = DownTrackSink::new("b".into(), 4);
        receiver.add_sink(a.clone());
        receiver.add_sink(b1);
        receiver.add_sink(b2);
        assert_eq!(receiver.sink_count(), 3);
        receiver.remove_subscriber("b");
        assert_eq!(receiver.sink_count(), 1);
        receiver.remove_sink(&a);
        assert_eq!(receiver.sink_count(), 0);
    }
}
