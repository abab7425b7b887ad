//! `switchboard load`: simulated publishers and subscribers against a running server.
//!
//! Every simulated participant is a real WebRTC peer (the protocol client), with real ICE,
//! DTLS and SRTP. The run joins them at the ramp rate, lets media flow for the duration,
//! stops the publishers, waits out the tail, and reports what each subscriber got.
//!
//! Loss and freezes are counted against the publishers' own per-track counters: every packet
//! a publisher sent to a room is expected at every other participant of that room, from the
//! first one it received (or the end of the settle time after the last join, if earlier) to
//! the last one sent. The SFU's rewritten sequence numbers are never used.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::load::client::{Client, JoinOptions};
use crate::load::clip::Clip;
use crate::load::config::LoadConfig;
use crate::load::error::LoadError;
use crate::load::expect::{percent, Expectations, Joined, SentCounts, Window};
use crate::load::probe::{metrics_url, scrape_counter, server_sample, MemoryTimeline};
use crate::load::progress::Progress;
use crate::load::received::new_latency_histogram;
use crate::load::report::{
    DownlinkReport, LatencySummary, ParticipantReport, ProcessSample, Report, ServerReport, Shape,
    Thresholds, TrackReport,
};

/// Runs a load test and returns its report.
pub async fn run(config: LoadConfig) -> Result<Report, LoadError> {
    config.validate()?;
    let clip = match config.clip.as_deref() {
        None => None,
        Some("builtin") => Some(Arc::new(
            Clip::builtin().map_err(|e| LoadError::Clip(e.to_string()))?,
        )),
        Some(path) => {
            let data = std::fs::read(path).map_err(|e| LoadError::Clip(format!("{path}: {e}")))?;
            Some(Arc::new(
                Clip::from_ivf(&data).map_err(|e| LoadError::Clip(format!("{path}: {e}")))?,
            ))
        }
    };
    let started = Instant::now();
    let tester_before = ProcessSample::of_self();
    let server_before = config.pid.and_then(ProcessSample::of_pid);
    let metrics_url = metrics_url(&config.url);
    let forwarded_before = match &metrics_url {
        Some(url) => scrape_counter(url, "switchboard_packets_out_total").await,
        None => None,
    };
    let scraped_at = Instant::now();

    // Join at the ramp rate; each join runs in its own task so a slow one delays no other.
    let plan = config.plan();
    let total = plan.len();
    let mut joins = JoinSet::new();
    let gap = Duration::from_secs_f64(1.0 / config.ramp);
    let options = config.publish_options(clip.clone());
    let mut failures: Vec<String> = Vec::new();
    let mut joined: Vec<Joined> = Vec::new();
    let mut progress = Progress::new(config.quiet);
    for planned in plan {
        let url = config.url.clone();
        let options = options.clone();
        joins.spawn(async move {
            let join = JoinOptions {
                downlink: planned.downlink,
                seed: planned.seed,
                ..JoinOptions::default()
            };
            let client = Client::join_with(&url, &planned.room, &planned.name, &join)
                .await
                .map_err(|e| format!("{}: join: {e}", planned.name))?;
            if planned.publishes {
                client
                    .publish(options)
                    .await
                    .map_err(|e| format!("{}: publish: {e}", planned.name))?;
            }
            Ok::<_, String>(Joined { planned, client })
        });
        tokio::time::sleep(gap).await;
        collect(&mut joins, &mut joined, &mut failures);
        progress.print(&joined, &config, None, failures.len(), total, false);
    }
    while let Some(result) = joins.join_next().await {
        match result {
            Ok(Ok(j)) => joined.push(j),
            Ok(Err(reason)) => failures.push(reason),
            Err(e) => failures.push(format!("join task: {e}")),
        }
    }

    // Media flows for the duration; stop early if the server goes away. After the settle
    // time, every packet a publisher sends is expected at every other participant.
    let media_started = Instant::now();
    let mut settled: Option<(Instant, SentCounts)> = None;
    let mut server_settled: Option<(ProcessSample, u64)> = None;
    let mut memory = MemoryTimeline::default();
    memory.sample(config.pid, media_started);
    while media_started.elapsed() < config.duration {
        let left = config.duration.saturating_sub(media_started.elapsed());
        tokio::time::sleep(Duration::from_millis(500).min(left)).await;
        if settled.is_none() && media_started.elapsed() >= config.settle {
            settled = Some((Instant::now(), SentCounts::of(&joined)));
            server_settled = server_sample(config.pid, metrics_url.as_deref()).await;
        }
        memory.sample(config.pid, media_started);
        progress.print(
            &joined,
            &config,
            settled.as_ref(),
            failures.len(),
            total,
            false,
        );
        if !joined.is_empty() && joined.iter().all(|j| j.client.signaling_closed()) {
            break;
        }
    }
    let server_end = server_sample(config.pid, metrics_url.as_deref()).await;
    for j in &joined {
        j.client.stop_publishing();
    }
    let stopped_at = Instant::now();
    // The run's tail: packets in flight when publishing stopped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent_end = SentCounts::of(&joined);
    progress.print(
        &joined,
        &config,
        settled.as_ref(),
        failures.len(),
        total,
        true,
    );

    let forwarded_after = match &metrics_url {
        Some(url) => scrape_counter(url, "switchboard_packets_out_total").await,
        None => None,
    };
    // The server forwards from the first join on, not only once all have joined.
    let forwarding_secs = scraped_at.elapsed().as_secs_f64();
    let wall = started.elapsed();
    let media_secs = media_started.elapsed().as_secs_f64();
    let server_after = config.pid.and_then(ProcessSample::of_pid);
    let tester_after = ProcessSample::of_self();
    memory.sample_now(config.pid, media_started);

    let window = Window {
        // A run shorter than the settle time expects only what subscribers started on.
        settled_at: settled.as_ref().map_or(stopped_at, |(at, _)| *at),
        stopped_at,
        freeze_threshold: config.freeze_threshold,
        origin: Some(started),
    };
    let expectations = Expectations::new(&config, &joined, settled.as_ref().map(|(_, c)| c));
    let mut participants = Vec::new();
    let mut all_latencies = new_latency_histogram();
    for j in &joined {
        if j.client.signaling_closed() {
            failures.push(format!(
                "{}: signaling socket closed by the server",
                j.planned.name
            ));
        }
        let mut latencies = new_latency_histogram();
        let received = j
            .client
            .with_received(|received| {
                for stats in received.values() {
                    if let Some(h) = &stats.latency_us {
                        for merged in [latencies.as_mut(), all_latencies.as_mut()]
                            .into_iter()
                            .flatten()
                        {
                            let _ = merged.add(h);
                        }
                    }
                }
                expectations.outcomes(j, received, &sent_end, &window)
            })
            .unwrap_or_default();
        for t in &received.tracks {
            if t.packets == 0 {
                failures.push(format!(
                    "{}: received nothing of {}'s {}",
                    j.planned.name, t.publisher_name, t.kind
                ));
            }
        }
        let stats = &j.client.publish_stats;
        let tracks_received = received.tracks.iter().filter(|t| t.packets > 0).count() as u64;
        let sum = |f: fn(&TrackReport) -> u64| received.tracks.iter().map(f).sum::<u64>();
        let expected = sum(|t| t.expected.unwrap_or(0));
        let lost = sum(|t| t.lost.unwrap_or(0));
        participants.push(ParticipantReport {
            name: j.planned.name.clone(),
            room: j.planned.room.clone(),
            id: j.client.id.clone(),
            publishes: j.planned.publishes,
            join_ms: received.first_media.map(|at| since_start(&j.client, at)),
            join_all_ms: received.all_media.map(|at| since_start(&j.client, at)),
            tracks_received,
            packets_received: sum(|t| t.packets),
            bytes_received: received.bytes,
            packets_expected: expected,
            packets_lost: lost,
            loss_percent: percent(lost, expected),
            duplicates: sum(|t| t.duplicates),
            freezes: sum(|t| t.freezes),
            frozen_ms: received.tracks.iter().map(|t| t.frozen_ms).sum(),
            jitter_ms: received.jitter_ms,
            latency: LatencySummary::from_histogram(latencies.as_ref()),
            packets_sent: sent_end.total_of(&j.client.id),
            video_packets_sent: sent_end.get(&j.client.id, "video"),
            audio_packets_sent: sent_end.get(&j.client.id, "audio"),
            tracks: received.tracks,
            keyframe_requests_received: stats
                .plis_received
                .load(std::sync::atomic::Ordering::Relaxed),
            downlink: downlink_report(&j.client),
        });
    }
    for j in joined {
        j.client.close().await;
    }

    let total_of = |f: fn(&ParticipantReport) -> u64| participants.iter().map(f).sum::<u64>();
    let expected = total_of(|p| p.packets_expected);
    let lost = total_of(|p| p.packets_lost);
    let join_times: Vec<f64> = participants.iter().filter_map(|p| p.join_ms).collect();
    let join_all_times: Vec<f64> = participants.iter().filter_map(|p| p.join_all_ms).collect();
    let server = ServerReport::from_samples(
        server_before,
        server_after,
        forwarded_before
            .zip(forwarded_after)
            .map(|(b, a)| a.saturating_sub(b)),
        forwarding_secs,
        participants.len(),
    );
    let tester = ProcessSample::cpu_seconds_between(tester_before, tester_after);
    let mut server = server.with_steady_state(server_settled, server_end);
    server.rss_timeline = memory.server;
    let mut report = Report {
        shape: Shape::from(&config),
        wall_seconds: wall.as_secs_f64(),
        media_seconds: media_secs,
        participants_planned: total,
        participants_connected: participants.len(),
        failures,
        packets_sent: total_of(|p| p.packets_sent),
        packets_expected: expected,
        packets_received: total_of(|p| p.packets_received),
        packets_lost: lost,
        loss_percent: percent(lost, expected),
        loss_measured: expected > 0,
        duplicates: total_of(|p| p.duplicates),
        freezes: total_of(|p| p.freezes),
        frozen_seconds: participants.iter().map(|p| p.frozen_ms).sum::<f64>() / 1000.0,
        receive_bitrate_bps: total_of(|p| p.bytes_received) as f64 * 8.0 / media_secs.max(0.001),
        jitter_ms_max: participants.iter().map(|p| p.jitter_ms).fold(0.0, f64::max),
        latency: LatencySummary::from_histogram(all_latencies.as_ref()),
        join_ms_p50: quantile(&join_times, 0.5),
        join_ms_p99: quantile(&join_times, 0.99),
        join_all_ms_p50: quantile(&join_all_times, 0.5),
        join_all_ms_p99: quantile(&join_all_times, 0.99),
        join_ms_max: join_times
            .iter()
            .copied()
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))),
        keyframe_requests: total_of(|p| p.keyframe_requests_received),
        server,
        tester_cpu_seconds: tester,
        tester_rss_timeline: memory.tester,
        tester_cpu_percent_per_participant: tester
            .map(|s| s / wall.as_secs_f64().max(0.001) * 100.0 / (total.max(1) as f64)),
        participants,
        thresholds: Thresholds::default(),
    };
    report.thresholds = Thresholds::check(&config, &report);
    Ok(report)
}

/// A shaped participant's downlink, as it was and what it did.
fn downlink_report(client: &Client) -> Option<DownlinkReport> {
    let link = client.link();
    let stats = client.downlink_stats();
    if link.is_transparent() && stats.lost + stats.overflowed == 0 {
        return None;
    }
    Some(DownlinkReport {
        rate_bps: link.rate_bps,
        delay_ms: link.delay.as_secs_f64() * 1000.0,
        loss_percent: link.loss * 100.0,
        datagrams: stats.datagrams,
        delivered: stats.delivered,
        lost: stats.lost,
        overflowed: stats.overflowed,
        max_queued_bytes: stats.max_queued_bytes,
    })
}

fn since_start(client: &Client, at: Instant) -> f64 {
    at.saturating_duration_since(client.started_at)
        .as_secs_f64()
        * 1000.0
}

fn collect(
    joins: &mut JoinSet<Result<Joined, String>>,
    joined: &mut Vec<Joined>,
    failures: &mut Vec<String>,
) {
    while let Some(result) = joins.try_join_next() {
        match result {
            Ok(Ok(j)) => joined.push(j),
            Ok(Err(reason)) => failures.push(reason),
            Err(e) => failures.push(format!("join task: {e}")),
        }
    }
}

fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(index).copied()
}
