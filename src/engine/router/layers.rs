//! How the Router chooses each DownTrack's simulcast layer: for how its subscriber shows the
//! track, within the subscriber's bandwidth estimate, and which layers publishers are asked to
//! send at all (dynacast).

use super::*;

/// A subscriber asking for a keyframe again within this long of the last one passed on cannot
/// keep up with what it gets: its requests are not passed on to the publisher meanwhile.
pub const KEYFRAME_REQUEST_AGAIN: Duration = Duration::from_secs(1);

/// What a subscriber's own keyframe request comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriberKeyframe {
    /// Ask the publisher for a keyframe of this layer.
    Ask(u8),
    /// The subscriber moved down to this layer, whose keyframe it waits for: a lower
    /// layer's keyframe is cheap, and within a constrained link it stops losing packets.
    StepDown(u8),
    /// Too soon after the last one: nothing.
    Ignore,
}

impl Router {
    /// Packets expected and arrived on every stream publisher `publisher` sends, since the
    /// last call: what its uplink loses.
    pub fn take_uplink_loss(&mut self, publisher: usize) -> (u64, u64) {
        let mut total = (0, 0);
        for (_, r) in self
            .receivers
            .iter_mut()
            .filter(|(_, r)| r.publisher == publisher)
        {
            for layer in r.layers.iter_mut().flatten() {
                let (expected, arrived) = layer.loss.take();
                total.0 += expected;
                total.1 += arrived;
            }
        }
        total
    }

    /// Whether the bandwidth of the subscriber of DownTracks `dks` keeps any of its video
    /// below the layer its view wants, and whether it paused any.
    pub fn held_back(&self, dks: &[usize]) -> (bool, bool) {
        let (mut held, mut paused) = (false, false);
        for d in dks.iter().filter_map(|&dk| self.downtracks.get(dk)) {
            let Some(r) = self.receivers.get(d.receiver) else {
                continue;
            };
            let wanted = allocator::layer_for_view(&r.layer_infos(), d.view);
            match (d.ceiling, wanted) {
                (Some(None), Some(_)) => paused = true,
                (Some(Some(c)), Some(w)) if c < w => held = true,
                _ => {}
            }
        }
        (held, paused)
    }

    /// A keyframe request from DownTrack `dk`'s subscriber, whose link is `constrained` (its
    /// estimate limits it). The first goes to the publisher; one repeated within
    /// [`KEYFRAME_REQUEST_AGAIN`] moves a constrained subscriber's simulcast track a layer
    /// down, and is otherwise not passed on: one weak subscriber must not make every
    /// publisher send keyframes twice a second.
    pub fn subscriber_wants_keyframe(
        &mut self,
        dk: usize,
        constrained: bool,
        now: Instant,
    ) -> SubscriberKeyframe {
        let Some(d) = self.downtracks.get_mut(dk) else {
            return SubscriberKeyframe::Ignore;
        };
        let repeated = d
            .keyframe_asked_at
            .is_some_and(|at| now.saturating_duration_since(at) < KEYFRAME_REQUEST_AGAIN);
        if !repeated {
            d.keyframe_asked_at = Some(now);
            return d
                .downtrack
                .keyframe_layer()
                .map_or(SubscriberKeyframe::Ignore, SubscriberKeyframe::Ask);
        }
        let current = d.downtrack.layers().current();
        let lower = match (constrained, current, self.receivers.get(d.receiver)) {
            (true, Some(current), Some(r)) => {
                let layers = r.layer_infos();
                (0..current)
                    .rev()
                    .find(|&l| layers.get(usize::from(l)).is_some_and(Option::is_some))
            }
            _ => None,
        };
        let Some(lower) = lower else {
            return SubscriberKeyframe::Ignore;
        };
        d.ceiling = Some(Some(lower));
        d.hysteresis = Hysteresis::default();
        d.keyframe_asked_at = Some(now);
        tracing::debug!(dk, lower, "keyframe requests again: a layer down");
        match self.allocate(dk) {
            Some(layer) => SubscriberKeyframe::StepDown(layer),
            None => SubscriberKeyframe::Ignore,
        }
    }

    /// Chooses DownTrack `dk`'s layer for how its subscriber shows the track. The layer whose
    /// keyframe that takes, when it takes one and the DownTrack can send.
    pub fn allocate(&mut self, dk: usize) -> Option<u8> {
        let d = self.downtracks.get_mut(dk)?;
        let layers = self.receivers.get(d.receiver)?.layer_infos();
        let mut target = allocator::layer_for_view(&layers, d.view);
        if let Some(ceiling) = d.ceiling {
            target = target.zip(ceiling).map(|(t, c)| t.min(c));
        }
        let needs_keyframe = d.downtrack.set_layer(target);
        if needs_keyframe {
            tracing::debug!(dk, ?target, view = ?d.view, ceiling = ?d.ceiling, "layer chosen");
        }
        (needs_keyframe && d.downtrack.is_ready())
            .then_some(target)
            .flatten()
    }

    /// Chooses the layers of one subscriber's DownTracks `dks` within `budget` bits a second
    /// (see [`allocator::allocate`]); down at once, up (or resumed) only within what the path
    /// has shown it carries (`tested`) and after the estimate held ([`Hysteresis`]), or at
    /// once when a probe has just `proven` the budget.
    pub fn allocate_within(
        &mut self,
        dks: &[usize],
        budget: f64,
        tested: f64,
        proven: bool,
        now: Instant,
    ) -> Allocation {
        let hold = if proven {
            Duration::ZERO
        } else {
            allocator::HOLD_BEFORE_UP
        };
        let mut video = Vec::with_capacity(dks.len());
        let mut demands = Vec::with_capacity(dks.len());
        let mut audio = 0;
        let mut wanted = 0.0;
        for &dk in dks {
            let Some(d) = self.downtracks.get(dk) else {
                continue;
            };
            let Some(r) = self.receivers.get(d.receiver) else {
                continue;
            };
            if !r.is_video() {
                audio += 1;
                wanted += allocator::AUDIO_RESERVE;
                continue;
            }
            let layers = r.layer_rates();
            let view_layer = allocator::layer_for_view(&r.layer_infos(), d.view);
            wanted += view_layer
                .and_then(|l| layers.get(usize::from(l)).copied().flatten())
                .unwrap_or(0.0);
            video.push(dk);
            demands.push(Demand {
                layers,
                wanted: view_layer,
                priority: r.priority(),
            });
        }
        let allowed = allocator::allocate(budget, audio, &demands);
        let allowed_up = allocator::allocate(tested.min(budget), audio, &demands);
        // What it has now may stay while the budget is a little short: estimates wobble, and
        // a switch costs a keyframe.
        let lenient = allocator::allocate(budget * (1.0 + allocator::KEEP_MARGIN), audio, &demands);
        let mut allocation = Allocation {
            wanted,
            ..Allocation::default()
        };
        for ((((dk, allowed), allowed_up), lenient), demand) in video
            .into_iter()
            .zip(allowed)
            .zip(allowed_up)
            .zip(lenient)
            .zip(&demands)
        {
            let Some(d) = self.downtracks.get_mut(dk) else {
                continue;
            };
            // Nothing of the track arrives (its publisher's media stopped): not a matter of
            // this subscriber's bandwidth; it goes on as it was when the media comes back.
            if lowest_arriving(demand).is_none() {
                continue;
            }
            let allowed = match d.ceiling {
                Some(current) if allowed < current && current <= lenient => current,
                _ => allowed,
            };
            // Before any estimate, it had what its view asks for.
            let current = d.ceiling.unwrap_or(demand.wanted);
            // Up only as far as the path has shown it carries.
            let allowed = if allowed > current {
                allowed.min(allowed_up.max(current))
            } else {
                allowed
            };
            let ceiling =
                d.hysteresis
                    .settle_holding(current, allowed, lowest_arriving(demand), hold, now);
            let was_paused = d.ceiling == Some(None) && d.view.enabled;
            let paused = ceiling.is_none() && demand.wanted.is_some();
            if paused != was_paused {
                allocation.paused_changed.push((dk, paused));
            }
            d.ceiling = Some(ceiling);
            let receiver = d.receiver;
            if let Some(layer) = self.allocate(dk) {
                allocation.keyframes.push((receiver, layer));
            }
        }
        allocation
    }

    /// Names layer `layer` of track `rk` as its publisher does.
    pub fn set_rid(&mut self, rk: usize, layer: u8, rid: Option<String>) {
        if let Some(l) = self.receivers.get_mut(rk).and_then(|r| r.layer_mut(layer)) {
            l.rid = rid;
        }
    }

    /// Simulcast tracks whose publisher is to send other layers than it was last asked (see
    /// [`Router::layers_needed`]): (track, the rids to send). More layers are asked for at
    /// once; fewer only once fewer have done for `LAYERS_OFF_AFTER`, so a subscriber that
    /// moves up again soon finds its layer running.
    pub fn layers_to_ask(&mut self, now: Instant) -> Vec<(usize, Vec<String>)> {
        let mut asks = Vec::new();
        let keys: Vec<usize> = self
            .receivers
            .iter()
            .filter(|(_, r)| r.layers.len() > 1)
            .map(|(rk, _)| rk)
            .collect();
        for rk in keys {
            let Some(needed) = self.layers_needed(rk) else {
                continue;
            };
            let r = &mut self.receivers[rk];
            let asked = r.layers_asked.as_ref();
            if asked == Some(&needed) {
                r.fewer_since = None;
                continue;
            }
            let fewer = asked.is_some_and(|a| needed.iter().all(|n| a.contains(n)));
            if fewer {
                let since = *r.fewer_since.get_or_insert(now);
                if now.saturating_duration_since(since) < LAYERS_OFF_AFTER {
                    continue;
                }
            }
            r.fewer_since = None;
            r.layers_asked = Some(needed.clone());
            asks.push((rk, needed));
        }
        asks
    }

    /// The layers of simulcast track `rk` its subscribers need: up to the highest any of them
    /// shows it at (counting layers the publisher stopped), and every layer below (cheap, and
    /// where a subscriber goes down at once); the lowest even when nobody watches. `None` when
    /// the track's layers have no names.
    ///
    /// Views only, not bandwidth: a layer that is not sent has no bitrate to weigh against a
    /// subscriber's estimate, so a subscriber held down by its estimate could never have it
    /// back.
    pub fn layers_needed(&self, rk: usize) -> Option<Vec<String>> {
        let r = self.receivers.get(rk)?;
        let all: Vec<Option<LayerInfo>> = r
            .layers
            .iter()
            .map(|l| l.as_ref().map(|l| l.info))
            .collect();
        let highest = r
            .downtracks
            .iter()
            .filter_map(|&dk| self.downtracks.get(dk))
            .filter_map(|d| allocator::layer_for_view(&all, d.view))
            .max();
        let rids: Vec<String> = r
            .layers
            .iter()
            // The lowest always: a track that falls silent reads as its publisher gone, and a
            // new subscriber starts on something at once.
            .take(highest.map_or(1, |h| usize::from(h) + 1))
            .filter_map(|l| l.as_ref().and_then(|l| l.rid.clone()))
            .collect();
        r.layers
            .iter()
            .flatten()
            .any(|l| l.rid.is_some())
            .then_some(rids)
    }

    /// Every layer's bitrate from the bytes that arrived since the last call.
    pub fn measure_layers(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if seconds <= 0.0 {
            return;
        }
        for (_, r) in self.receivers.iter_mut() {
            for layer in r.layers.iter_mut().flatten() {
                let sample = std::mem::take(&mut layer.bytes) as f64 * 8.0 / seconds;
                layer.bitrate = if layer.bitrate == 0.0 {
                    sample
                } else {
                    layer.bitrate + BITRATE_SMOOTHING * (sample - layer.bitrate)
                };
            }
        }
    }

    /// Writes up to `bytes` of padding into the stream of one of `dks` that can take it, to
    /// probe its subscriber's downlink; the bytes sent.
    pub fn pad(
        &mut self,
        dks: &[usize],
        bytes: usize,
        now: Instant,
        out: &mut impl MediaOut,
    ) -> usize {
        let ntp = extensions::ntp_now();
        let mut sent = 0;
        for &dk in dks {
            let Some(d) = self.downtracks.get_mut(dk) else {
                continue;
            };
            while sent < bytes {
                let mut buf = out.buffer();
                let Some(shape) = d.downtrack.pad(now, ntp, &mut buf) else {
                    out.give_back(buf);
                    break;
                };
                let len = buf.len();
                if !out.send(d.peer, buf, shape, now) {
                    return sent;
                }
                Metrics::add(&self.metrics.padding_packets, 1);
                sent += len;
            }
            if sent >= bytes {
                break;
            }
        }
        sent
    }

    /// How the subscriber of DownTrack `dk` shows its track now: its layer is chosen again.
    pub fn set_view(&mut self, dk: usize, view: View) -> Option<u8> {
        self.downtracks.get_mut(dk)?.view = view;
        self.allocate(dk)
    }

    /// Chooses again the layer of every DownTrack of track `rk` (its layers changed): the
    /// layers whose keyframes that takes.
    pub fn reallocate(&mut self, rk: usize) -> u8 {
        let Some(entry) = self.receivers.get_mut(rk) else {
            return 0;
        };
        entry.resized = false;
        let downtracks = entry.downtracks.clone();
        downtracks
            .into_iter()
            .filter_map(|dk| self.allocate(dk))
            .fold(0, |bits, layer| bits | keyframe_bit(Some(layer)))
    }

    /// The tracks of more than one layer where a layer stopped arriving since the last look:
    /// their DownTracks' layers are to be chosen again.
    pub fn stalled_layers(&mut self, now: Instant) -> Vec<usize> {
        self.receivers
            .iter_mut()
            .filter(|(_, r)| r.layers.len() > 1)
            .filter_map(|(rk, r)| r.refresh_activity(now).then_some(rk))
            .collect()
    }

    /// Whether a layer of track `rk` changed size since its DownTracks' layers were chosen.
    pub fn resized(&self, rk: usize) -> bool {
        self.receivers.get(rk).is_some_and(|r| r.resized)
    }
}

/// The lowest layer of a track that arrives, up to the one its view wants.
fn lowest_arriving(demand: &Demand) -> Option<u8> {
    let wanted = demand.wanted?;
    demand
        .layers
        .iter()
        .take(usize::from(wanted) + 1)
        .position(Option::is_some)
        .map(|l| l as u8)
}
