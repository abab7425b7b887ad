//! Which layer of each video track a subscriber gets.
//!
//! A layer is never larger than the track is shown: the client says how large it shows each
//! track (`subscription` in `docs/protocol.md`), and the smallest layer that covers that size is
//! enough. A track the client does not show (`enabled: false`) gets nothing.
//!
//! Nor does a subscriber get more than its bandwidth estimate allows ([`allocate`]): audio
//! first and never paused, then every video track's lowest layer by priority (screen share,
//! then the rest), then the upgrades, again by priority; a track that does not fit even at its
//! lowest layer is paused. Going down happens at once; going up is for the caller to hold back
//! until the estimate has been steady ([`Hysteresis`]).

/// How a subscriber shows one track, in device pixels; 0 × 0 is unknown (any size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub enabled: bool,
    pub width: u32,
    pub height: u32,
}

impl Default for View {
    fn default() -> Self {
        View {
            enabled: true,
            width: 0,
            height: 0,
        }
    }
}

/// What one layer of a track is, as far as the server can tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerInfo {
    /// Its picture size, from its last keyframe (VP8); `None` when not known.
    pub size: Option<(u32, u32)>,
}

/// A layer covers a view when it is at least this fraction of the view's size: a picture
/// scaled up by a tenth looks the same, and simulcast layers are a factor of two apart.
const COVERS: f64 = 0.9;

/// The layer to forward for `view` of a track whose layers are `layers` (by index, lowest
/// first; `None` for one not arriving): the smallest that covers the view, else the largest.
/// Without sizes, an unknown view takes the top layer and a known one the layer a browser's
/// usual halving gives it (the top is full size).
pub fn layer_for_view(layers: &[Option<LayerInfo>], view: View) -> Option<u8> {
    if !view.enabled {
        return None;
    }
    let present: Vec<(u8, LayerInfo)> = layers
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.map(|l| (i as u8, l)))
        .collect();
    let &(top, top_info) = present.last()?;
    if view.width == 0 || view.height == 0 {
        return Some(top);
    }
    let covers = |size: (u32, u32)| {
        f64::from(size.0) >= f64::from(view.width) * COVERS
            && f64::from(size.1) >= f64::from(view.height) * COVERS
    };
    if present.iter().all(|(_, l)| l.size.is_some()) {
        // The smallest that covers; of layers that size (a screen sent sharp at two frame
        // rates), the higher.
        let area = |l: &LayerInfo| {
            l.size
                .map_or(u64::MAX, |(w, h)| u64::from(w) * u64::from(h))
        };
        return present
            .iter()
            .filter(|(_, l)| l.size.is_some_and(covers))
            .min_by_key(|(i, l)| (area(l), std::cmp::Reverse(*i)))
            .map_or(Some(top), |(i, _)| Some(*i));
    }
    // Sizes unknown: assume each layer below the top halves it.
    let full = top_info.size.unwrap_or((1280, 720));
    present
        .iter()
        .find(|(i, _)| {
            let halvings = u32::from(top - i);
            covers((full.0 >> halvings, full.1 >> halvings))
        })
        .map_or(Some(top), |(i, _)| Some(*i))
}

/// One video track a subscriber receives, as the allocator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    /// Each layer's bitrate, bits a second, lowest first (`None`: not arriving).
    pub layers: Vec<Option<f64>>,
    /// The layer its view asks for ([`layer_for_view`]); `None`: not shown.
    pub wanted: Option<u8>,
    /// Lower is served first: 0 a screen share, 1 the rest.
    pub priority: u8,
}

/// A subscriber keeps the layers it has while the budget is short of them by less than this
/// fraction.
pub const KEEP_MARGIN: f64 = 0.15;

/// What audio costs a subscriber per track before any video is given a layer.
pub const AUDIO_RESERVE: f64 = 48_000.0;

/// The layer of each demand within `budget` bits a second, after `audio_tracks` are served.
pub fn allocate(budget: f64, audio_tracks: usize, demands: &[Demand]) -> Vec<Option<u8>> {
    let mut left = budget - AUDIO_RESERVE * audio_tracks as f64;
    let mut chosen: Vec<Option<u8>> = vec![None; demands.len()];
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by_key(|&i| demands[i].priority);
    // Every shown track its lowest arriving layer, while it fits.
    for &i in &order {
        let d = &demands[i];
        let Some(wanted) = d.wanted else {
            continue;
        };
        let lowest = d
            .layers
            .iter()
            .enumerate()
            .take(usize::from(wanted) + 1)
            .find_map(|(l, rate)| rate.map(|r| (l as u8, r)));
        if let Some((layer, rate)) = lowest {
            if rate <= left {
                left -= rate;
                chosen[i] = Some(layer);
            }
        }
    }
    // Then upgrades, one layer at a time, the most important track first.
    loop {
        let mut upgraded = false;
        for &i in &order {
            let d = &demands[i];
            let (Some(current), Some(wanted)) = (chosen[i], d.wanted) else {
                continue;
            };
            let next = (current + 1..=wanted).find_map(|l| {
                d.layers
                    .get(usize::from(l))
                    .copied()
                    .flatten()
                    .map(|r| (l, r))
            });
            let Some((layer, rate)) = next else {
                continue;
            };
            let now_rate = d.layers[usize::from(current)].unwrap_or(0.0);
            if rate - now_rate <= left {
                left -= rate - now_rate;
                chosen[i] = Some(layer);
                upgraded = true;
            }
        }
        if !upgraded {
            return chosen;
        }
    }
}

/// How long the estimate must allow a higher layer before a subscriber goes up: a higher layer
/// that does not fit costs a freeze, a lower one that lingers only some sharpness.
pub const HOLD_BEFORE_UP: std::time::Duration = std::time::Duration::from_secs(3);

/// Per subscriber and track: the allocation it can have now against the one it has, with the
/// hold on the way up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hysteresis {
    /// Since when a higher layer than the current one would have fitted.
    up_since: Option<std::time::Instant>,
    /// Since when not even the lowest layer has fitted.
    short_since: Option<std::time::Instant>,
}

/// How long not even a track's lowest layer must fit before it is paused: pausing blanks the
/// tile, so one wobble of the estimate (a burst of delay) must not do it; a probe meanwhile
/// may show the room is there.
pub const PAUSE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

impl Hysteresis {
    /// The layer to forward, given the one it forwards (`current`) and the one the budget
    /// allows now (`allowed`), going up after [`HOLD_BEFORE_UP`].
    pub fn settle(
        &mut self,
        current: Option<u8>,
        allowed: Option<u8>,
        lowest: Option<u8>,
        now: std::time::Instant,
    ) -> Option<u8> {
        self.settle_holding(current, allowed, lowest, HOLD_BEFORE_UP, now)
    }

    /// [`Hysteresis::settle`], going up after `hold`: none when a probe has just shown the
    /// path carries the budget, since then the estimate is not a guess to wait out.
    pub fn settle_holding(
        &mut self,
        current: Option<u8>,
        allowed: Option<u8>,
        lowest: Option<u8>,
        hold: std::time::Duration,
        now: std::time::Instant,
    ) -> Option<u8> {
        if allowed.is_none() && current.is_some() && lowest.is_some() {
            let since = *self.short_since.get_or_insert(now);
            self.up_since = None;
            return if now.saturating_duration_since(since) >= PAUSE_AFTER {
                None
            } else {
                lowest
            };
        }
        self.short_since = None;
        // Resuming a paused track is going up too: resumed at the first sign of room, it
        // freezes again as soon as the estimate wobbles back.
        let up = match (current, allowed) {
            (Some(c), Some(a)) => a > c,
            (None, Some(_)) => true,
            _ => false,
        };
        if !up {
            self.up_since = None;
            return allowed;
        }
        let since = *self.up_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= hold {
            self.up_since = None;
            allowed
        } else {
            current
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sized(w: u32, h: u32) -> Option<LayerInfo> {
        Some(LayerInfo { size: Some((w, h)) })
    }

    fn view(width: u32, height: u32) -> View {
        View {
            enabled: true,
            width,
            height,
        }
    }

    #[test]
    fn the_smallest_layer_that_covers_the_view() {
        let layers = [sized(320, 180), sized(640, 360), sized(1280, 720)];
        assert_eq!(layer_for_view(&layers, view(300, 170)), Some(0));
        assert_eq!(
            layer_for_view(&layers, view(330, 185)),
            Some(0),
            "within a tenth"
        );
        assert_eq!(layer_for_view(&layers, view(400, 225)), Some(1));
        assert_eq!(layer_for_view(&layers, view(1280, 720)), Some(2));
        assert_eq!(
            layer_for_view(&layers, view(2560, 1440)),
            Some(2),
            "the largest there is"
        );
        assert_eq!(
            layer_for_view(&layers, View::default()),
            Some(2),
            "size unknown"
        );
        let hidden = View {
            enabled: false,
            ..view(640, 360)
        };
        assert_eq!(layer_for_view(&layers, hidden), None);
    }

    #[test]
    fn of_two_layers_the_same_size_the_higher() {
        // A screen: both layers full size, the lower at a few frames a second.
        let screen = [sized(1280, 720), sized(1280, 720)];
        assert_eq!(layer_for_view(&screen, view(640, 360)), Some(1));
        assert_eq!(layer_for_view(&screen, View::default()), Some(1));
    }

    #[test]
    fn missing_layers_and_unknown_sizes() {
        assert_eq!(layer_for_view(&[], View::default()), None);
        assert_eq!(layer_for_view(&[None, None, None], View::default()), None);
        // Only the bottom two arrive: the top of what there is.
        let two = [sized(320, 180), sized(640, 360), None];
        assert_eq!(layer_for_view(&two, view(1280, 720)), Some(1));
        // No sizes yet: halvings from the top, assumed 720p.
        let blind = [Some(LayerInfo::default()); 3];
        assert_eq!(layer_for_view(&blind, view(320, 180)), Some(0));
        assert_eq!(layer_for_view(&blind, view(600, 340)), Some(1));
        assert_eq!(layer_for_view(&blind, view(1000, 600)), Some(2));
        // A track that is not simulcast has one layer: it is always that one.
        assert_eq!(
            layer_for_view(&[Some(LayerInfo::default())], view(100, 100)),
            Some(0)
        );
    }

    fn demand(layers: &[f64], wanted: u8, priority: u8) -> Demand {
        Demand {
            layers: layers.iter().map(|&r| Some(r)).collect(),
            wanted: Some(wanted),
            priority,
        }
    }

    const CAMERA: [f64; 3] = [150_000.0, 450_000.0, 1_300_000.0];

    #[test]
    fn audio_first_then_every_track_at_its_lowest_then_the_most_important_up() {
        let camera = demand(&CAMERA, 2, 1);
        let screen = demand(&[500_000.0, 2_500_000.0], 1, 0);
        // Plenty: everyone at what they want.
        assert_eq!(
            allocate(10_000_000.0, 2, &[camera.clone(), screen.clone()]),
            vec![Some(2), Some(1)]
        );
        // 1.2 Mbit/s: audio 96 k, both lowest (650 k), then the screen cannot go up (2 M more),
        // the camera can: +300 k to its middle layer.
        assert_eq!(
            allocate(1_200_000.0, 2, &[camera.clone(), screen.clone()]),
            vec![Some(1), Some(0)]
        );
        // 600 kbit/s: the screen's lowest fits, the camera's does not after it: paused.
        assert_eq!(
            allocate(600_000.0, 2, &[camera.clone(), screen.clone()]),
            vec![None, Some(0)]
        );
        // Nothing wanted, nothing given; a track it cannot show gets nothing either.
        let hidden = Demand {
            wanted: None,
            ..camera.clone()
        };
        assert_eq!(allocate(10_000_000.0, 0, &[hidden]), vec![None]);
        // Never above what the view wants.
        assert_eq!(
            allocate(10_000_000.0, 0, &[demand(&CAMERA, 0, 1)]),
            vec![Some(0)]
        );
    }

    #[test]
    fn a_layer_not_arriving_is_skipped() {
        let d = Demand {
            layers: vec![None, Some(450_000.0), Some(1_300_000.0)],
            wanted: Some(2),
            priority: 1,
        };
        assert_eq!(
            allocate(500_000.0, 0, std::slice::from_ref(&d)),
            vec![Some(1)]
        );
        assert_eq!(allocate(2_000_000.0, 0, &[d]), vec![Some(2)]);
    }

    #[test]
    fn down_at_once_up_after_a_steady_hold_and_no_flapping() {
        let t0 = std::time::Instant::now();
        let at = |ms| t0 + std::time::Duration::from_millis(ms);
        let mut h = Hysteresis::default();
        assert_eq!(
            h.settle(Some(2), Some(0), Some(0), at(0)),
            Some(0),
            "down at once"
        );
        assert_eq!(h.settle(Some(0), Some(2), Some(0), at(100)), Some(0));
        assert_eq!(
            h.settle(Some(0), Some(2), Some(0), at(2_000)),
            Some(0),
            "held"
        );
        // The estimate dips: the hold starts over.
        assert_eq!(h.settle(Some(0), Some(0), Some(0), at(2_500)), Some(0));
        assert_eq!(h.settle(Some(0), Some(2), Some(0), at(3_000)), Some(0));
        assert_eq!(h.settle(Some(0), Some(2), Some(0), at(5_900)), Some(0));
        assert_eq!(
            h.settle(Some(0), Some(2), Some(0), at(6_000)),
            Some(2),
            "up after 3 s steady"
        );
        // A flapping estimate never takes it up.
        let mut f = Hysteresis::default();
        for i in 0..100u64 {
            let allowed = if i % 2 == 0 { Some(2) } else { Some(0) };
            assert_eq!(f.settle(Some(0), allowed, Some(0), at(i * 500)), Some(0));
        }
        // From paused, back only once the room has held too: resumed at the first sign of it,
        // a track freezes again at the next wobble.
        let mut p = Hysteresis::default();
        assert_eq!(p.settle(None, Some(0), Some(0), at(0)), None);
        assert_eq!(p.settle(None, Some(0), Some(0), at(2_900)), None);
        assert_eq!(p.settle(None, Some(0), Some(0), at(3_000)), Some(0));
        // Not even the lowest fits: the lowest while it lasts, paused only after a while.
        assert_eq!(p.settle(Some(2), None, Some(0), at(100)), Some(0));
        assert_eq!(p.settle(Some(0), None, Some(0), at(1_500)), Some(0));
        assert_eq!(p.settle(Some(0), None, Some(0), at(2_100)), None);
        // A wobble does not pause.
        let mut w = Hysteresis::default();
        assert_eq!(w.settle(Some(1), None, Some(0), at(0)), Some(0));
        assert_eq!(w.settle(Some(0), Some(0), Some(0), at(1_000)), Some(0));
        assert_eq!(w.settle(Some(0), None, Some(0), at(2_500)), Some(0));
    }
}
