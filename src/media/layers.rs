//! Which simulcast layer a DownTrack forwards, and when it switches.
//!
//! A published video track may arrive as several streams (layers, lowest first), each with its
//! own SSRC, numbering and keyframes. A DownTrack forwards exactly one of them. It switches only
//! on a keyframe of the layer it is to switch to: until that keyframe comes it goes on with the
//! layer it has, so the subscriber's picture never stops for a switch. Whoever sets the target
//! asks the publisher for that keyframe.

/// What the selector makes of one packet of layer `layer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// It belongs to the layer being forwarded.
    Forward,
    /// The keyframe the DownTrack waited for: from this packet on it forwards `layer`.
    Switch,
    /// Another layer's packet, or nothing is to be forwarded (paused).
    Skip,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerSelector {
    /// The layer forwarded now.
    current: Option<u8>,
    /// The layer wanted; `None` pauses the DownTrack.
    target: Option<u8>,
}

impl LayerSelector {
    /// Starts wanting `target` (a stream that is not simulcast has only layer 0).
    pub fn new(target: Option<u8>) -> Self {
        LayerSelector {
            current: None,
            target,
        }
    }

    pub fn current(&self) -> Option<u8> {
        self.current
    }

    pub fn target(&self) -> Option<u8> {
        self.target
    }

    /// Wants `target` from now on. True when that takes a keyframe of `target` (the caller
    /// asks for one); pausing takes effect at once.
    pub fn set_target(&mut self, target: Option<u8>) -> bool {
        self.target = target;
        if target.is_none() {
            self.current = None;
        }
        target.is_some() && target != self.current
    }

    /// The layer whose keyframe the DownTrack waits for, if it waits for one.
    pub fn switch_pending(&self) -> Option<u8> {
        self.target.filter(|&t| Some(t) != self.current)
    }

    /// The layer it needs a keyframe of to go on: the one it switches to, else its own.
    pub fn keyframe_layer(&self) -> Option<u8> {
        self.target.or(self.current)
    }

    /// Forgets the current layer: the next keyframe of the target starts it again.
    pub fn restart(&mut self) {
        self.current = None;
    }

    pub fn admit(&mut self, layer: u8, is_keyframe: bool) -> Admit {
        let Some(target) = self.target else {
            return Admit::Skip;
        };
        if layer == target && self.current != Some(target) {
            if is_keyframe {
                self.current = Some(target);
                return Admit::Switch;
            }
            return Admit::Skip;
        }
        if Some(layer) == self.current {
            Admit::Forward
        } else {
            Admit::Skip
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_keyframe_of_its_target_and_ignores_the_other_layers() {
        let mut s = LayerSelector::new(Some(1));
        assert_eq!(s.admit(1, false), Admit::Skip, "waits for a keyframe");
        assert_eq!(s.admit(0, true), Admit::Skip, "another layer");
        assert_eq!(s.admit(1, true), Admit::Switch);
        assert_eq!(s.admit(1, false), Admit::Forward);
        assert_eq!(s.admit(2, true), Admit::Skip);
        assert_eq!(s.current(), Some(1));
    }

    #[test]
    fn a_switch_goes_on_with_the_old_layer_until_the_new_one_has_a_keyframe() {
        let mut s = LayerSelector::new(Some(2));
        s.admit(2, true);
        assert!(
            s.set_target(Some(0)),
            "a switch down needs a keyframe of layer 0"
        );
        assert_eq!(s.switch_pending(), Some(0));
        assert_eq!(
            s.admit(2, false),
            Admit::Forward,
            "the picture does not stop"
        );
        assert_eq!(s.admit(0, false), Admit::Skip);
        assert_eq!(s.admit(0, true), Admit::Switch);
        assert_eq!(s.admit(2, false), Admit::Skip);
        assert_eq!(s.switch_pending(), None);
        assert!(!s.set_target(Some(0)), "already there");
    }

    #[test]
    fn paused_forwards_nothing_and_resumes_on_a_keyframe() {
        let mut s = LayerSelector::new(Some(0));
        s.admit(0, true);
        assert!(!s.set_target(None));
        assert_eq!(s.admit(0, true), Admit::Skip);
        assert!(s.set_target(Some(0)));
        assert_eq!(s.keyframe_layer(), Some(0));
        assert_eq!(s.admit(0, false), Admit::Skip);
        assert_eq!(s.admit(0, true), Admit::Switch);
    }
}
