//! Which layer of each video track a subscriber gets.
//!
//! A layer is never larger than the track is shown: the client says how large it shows each
//! track (`subscription` in `docs/protocol.md`), and the smallest layer that covers that size is
//! enough. A track the client does not show (`enabled: false`) gets nothing.

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
}
