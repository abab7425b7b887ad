//! A room with one simulcast publisher and subscribers behind emulated downlinks (the load
//! tester's client), for tests of layer selection and bandwidth estimation.

use std::time::Duration;

use switchboard::load::bottleneck::LinkConfig;
use switchboard::load::client::{Client, JoinOptions};
use switchboard::load::publish::PublishOptions;
use switchboard::load::received::RemoteTrackStats;

use super::WAIT;

/// A room with one simulcast publisher and subscribers, each behind its own emulated downlink:
/// what a test of layer selection needs, in a few lines.
///
/// ```ignore
/// let room = SimulcastRoom::join(&server.ws_url(), &[LinkConfig::default(), downlink(300_000)]).await;
/// room.wait_layer(1, 0).await; // the shaped subscriber moves to the low layer
/// room.wait_layer(0, 2).await; // the other stays on the top one
/// room.subscribers[1].set_downlink(Some(3_000_000));
/// room.wait_layer(1, 2).await; // and comes back up once its link does
/// ```
pub struct SimulcastRoom {
    pub publisher: Client,
    pub subscribers: Vec<Client>,
}

/// A downlink of `bps` bits per second (200 ms of queue, at least 64 KiB), no delay or loss.
pub fn downlink(bps: u64) -> LinkConfig {
    LinkConfig {
        rate_bps: Some(bps),
        ..LinkConfig::default()
    }
}

impl SimulcastRoom {
    /// Layers at 150, 300 and 1,000 kbit/s, no audio: the low layer fits a 300 kbit/s link.
    pub fn publish_options() -> PublishOptions {
        PublishOptions {
            simulcast: true,
            audio: false,
            video_bitrate_bps: 1_000_000,
            keyframe_interval: Duration::from_secs(60),
            ..PublishOptions::default()
        }
    }

    pub async fn join(url: &str, downlinks: &[LinkConfig]) -> Self {
        Self::join_with(url, downlinks, Self::publish_options()).await
    }

    /// Joins the subscribers first (each with its downlink), then the publisher, and waits
    /// until every subscriber receives its video.
    pub async fn join_with(url: &str, downlinks: &[LinkConfig], options: PublishOptions) -> Self {
        let room = "simulcast";
        let mut subscribers = Vec::new();
        for (i, link) in downlinks.iter().enumerate() {
            let join = JoinOptions {
                downlink: *link,
                seed: i as u64 + 1,
                ..JoinOptions::default()
            };
            let client = Client::join_with(url, room, &format!("sub-{i}"), &join)
                .await
                .expect("a subscriber joins");
            subscribers.push(client);
        }
        let publisher = Client::join(url, room, "pub").await.expect("joins");
        publisher
            .publish(options)
            .await
            .expect("publishes simulcast");
        let room = SimulcastRoom {
            publisher,
            subscribers,
        };
        for s in &room.subscribers {
            s.wait_received("simulcast video", WAIT, |r| {
                r.values()
                    .any(|t| t.kind == "video" && t.is_simulcast() && t.distinct > 10)
            })
            .await
            .expect("the subscriber receives the simulcast video");
        }
        room
    }

    /// The track id subscribers name in `subscription`.
    pub fn track_id(&self) -> String {
        format!("{}-video", self.publisher.id)
    }

    /// What subscriber `i` received of the video so far.
    pub fn video(&self, i: usize) -> RemoteTrackStats {
        self.subscribers[i]
            .received()
            .into_values()
            .find(|t| t.stream_id == self.publisher.id && t.kind == "video")
            .expect("video received")
    }

    /// Waits until subscriber `i` receives layer `layer` (0 lowest), read from the stamps.
    pub async fn wait_layer(&self, i: usize, layer: u8) -> RemoteTrackStats {
        self.subscribers[i]
            .wait_layer(&self.publisher.id, layer, WAIT)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "subscriber {i} never got layer {layer} ({e}): {:?}",
                    self.video(i).runs
                )
            })
    }
}

/// The runs of one layer each follow one another in the subscriber's sequence numbers with
/// nothing between, and lose nothing inside (loopback).
pub fn assert_continuous(video: &RemoteTrackStats, who: &str) {
    assert!(!video.runs.is_empty(), "{who}: no layer received");
    for pair in video.runs.windows(2) {
        assert_ne!(pair[0].layer, pair[1].layer, "{who}: {:?}", video.runs);
        assert_eq!(
            pair[0].sequences().1 + 1,
            pair[1].sequences().0,
            "{who}: the server's numbering runs on across a switch: {:?}",
            video.runs
        );
    }
    for run in &video.runs {
        assert_eq!(run.lost(), 0, "{who}: {run:?}");
    }
    assert_eq!(video.sequence_gaps, 0, "{who}: sequence numbers skip");
    assert_eq!(video.picture_id_jumps, 0, "{who}: VP8 picture ids skip");
    assert_eq!(video.duplicates, 0, "{who}");
}
