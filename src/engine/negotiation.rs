//! A subscriber PC's negotiation, as decisions without I/O: which wanted tracks go into the
//! next server offer, when that offer may go, and which m-lines an answer starts.
//!
//! The rules (`docs/protocol.md`, "Two peer connections"):
//! - at most one server offer is outstanding; what changes meanwhile goes into the next one,
//!   made once the answer is in;
//! - of a kind with no m-line in an answered offer yet, one new m-line per offer, the others in
//!   the next: aiortc (bundlePolicy "balanced") gives the second and later new m-lines of a kind
//!   the first one's pre-BUNDLE transport and then closes it, so their receivers never start
//!   (aiortc#1414);
//! - once an answer was applied, later offers wait for the transport to be up: aiortc loses
//!   m-lines renegotiated while its DTLS transport is still connecting.
//!
//! `F` is what the caller keeps per forwarded track (its transceiver, its DownTrack).

use std::collections::HashMap;

use crate::media::kind::TrackKind;

/// A published track: (publisher id, track id).
pub type TrackKey = (String, String);

struct Forwarded<F> {
    value: F,
    kind: TrackKind,
    /// Its m-line is in the offer now outstanding (or an answered one).
    offered: bool,
}

pub struct Negotiation<F> {
    /// Wanted, not on the PC yet.
    pending: Vec<(TrackKey, TrackKind)>,
    forwarded: HashMap<TrackKey, Forwarded<F>>,
    /// Kinds with an m-line in an answered offer.
    negotiated_kinds: Vec<TrackKind>,
    offer_outstanding: bool,
    needs_offer: bool,
    /// An answer was applied.
    answered: bool,
}

impl<F> Default for Negotiation<F> {
    /// A new subscriber PC: its first offer (the chat channel) is due at once.
    fn default() -> Self {
        Negotiation {
            pending: Vec::new(),
            forwarded: HashMap::new(),
            negotiated_kinds: Vec::new(),
            offer_outstanding: false,
            needs_offer: true,
            answered: false,
        }
    }
}

impl<F> Negotiation<F> {
    /// Wants `key` forwarded; false if it is already, or already wanted.
    pub fn want(&mut self, key: TrackKey, kind: TrackKind) -> bool {
        if self.forwarded.contains_key(&key) || self.pending.iter().any(|(k, _)| *k == key) {
            return false;
        }
        self.pending.push((key, kind));
        self.needs_offer = true;
        true
    }

    /// A track wanted but not yet on the PC is gone: it will not be offered.
    pub fn unwant(&mut self, key: &TrackKey) {
        self.pending.retain(|(k, _)| k != key);
    }

    /// Whether a new offer should be made now, the subscriber's transport being up or not.
    pub fn offer_due(&self, transport_up: bool) -> bool {
        self.needs_offer && !self.offer_outstanding && (!self.answered || transport_up)
    }

    /// The wanted tracks the next offer carries (the caller puts each on the PC and then calls
    /// [`Negotiation::forwarding`]); the others stay wanted for a later offer.
    pub fn take_for_offer(&mut self) -> Vec<(TrackKey, TrackKind)> {
        let mut new_kinds: Vec<TrackKind> = Vec::new();
        let mut now = Vec::new();
        for (key, kind) in std::mem::take(&mut self.pending) {
            let negotiated = self.negotiated_kinds.contains(&kind);
            if negotiated || !new_kinds.contains(&kind) {
                if !negotiated {
                    new_kinds.push(kind);
                }
                now.push((key, kind));
            } else {
                self.pending.push((key, kind));
            }
        }
        now
    }

    /// A track taken for the offer is on the PC now.
    pub fn forwarding(&mut self, key: TrackKey, kind: TrackKind, value: F) {
        self.forwarded.insert(
            key,
            Forwarded {
                value,
                kind,
                offered: false,
            },
        );
    }

    /// The offer went out: every forwarded m-line is in it.
    pub fn offered(&mut self) {
        self.needs_offer = false;
        self.offer_outstanding = true;
        for f in self.forwarded.values_mut() {
            f.offered = true;
        }
    }

    /// Making the offer failed: it is not retried until something changes.
    pub fn offer_failed(&mut self) {
        self.needs_offer = false;
    }

    pub fn offer_outstanding(&self) -> bool {
        self.offer_outstanding
    }

    /// The answer to the outstanding offer was applied: the m-lines it may have accepted, for
    /// the caller to check one by one ([`Negotiation::kind_negotiated`]). A new offer is due if
    /// tracks are still wanted.
    pub fn answered(&mut self) -> impl Iterator<Item = (&TrackKey, &F, TrackKind)> {
        self.offer_outstanding = false;
        self.answered = true;
        if !self.pending.is_empty() {
            self.needs_offer = true;
        }
        self.forwarded
            .iter()
            .filter(|(_, f)| f.offered)
            .map(|(k, f)| (k, &f.value, f.kind))
    }

    /// The answer accepted an m-line of `kind`: later new tracks of that kind may be offered
    /// together.
    pub fn kind_negotiated(&mut self, kind: TrackKind) {
        if !self.negotiated_kinds.contains(&kind) {
            self.negotiated_kinds.push(kind);
        }
    }

    /// Whether an answer was ever applied.
    pub fn was_answered(&self) -> bool {
        self.answered
    }

    /// A forwarded track is gone: its m-line goes in the next offer.
    pub fn remove(&mut self, key: &TrackKey) -> Option<F> {
        let f = self.forwarded.remove(key)?;
        self.needs_offer = true;
        Some(f.value)
    }

    pub fn get(&self, key: &TrackKey) -> Option<&F> {
        self.forwarded.get(key).map(|f| &f.value)
    }

    /// The key of the forwarded track whose value `pred` picks.
    pub fn find(&self, pred: impl Fn(&F) -> bool) -> Option<TrackKey> {
        self.forwarded
            .iter()
            .find(|(_, f)| pred(&f.value))
            .map(|(k, _)| k.clone())
    }

    /// The forwarded track whose key `pred` picks.
    pub fn find_key(&self, pred: impl Fn(&TrackKey) -> bool) -> Option<TrackKey> {
        self.forwarded.keys().find(|k| pred(k)).cloned()
    }

    pub fn values(&self) -> impl Iterator<Item = &F> {
        self.forwarded.values().map(|f| &f.value)
    }

    pub fn len(&self) -> usize {
        self.forwarded.len()
    }

    pub fn is_empty(&self) -> bool {
        self.forwarded.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str, t: &str) -> TrackKey {
        (p.to_string(), t.to_string())
    }

    /// Offers `n` as the worker does: takes what may go, puts it on the "PC", marks it offered.
    fn offer(n: &mut Negotiation<u32>) -> Vec<TrackKey> {
        let taken = n.take_for_offer();
        for (i, (k, kind)) in taken.iter().enumerate() {
            n.forwarding(k.clone(), *kind, i as u32);
        }
        n.offered();
        taken.into_iter().map(|(k, _)| k).collect()
    }

    /// Applies an answer that accepts every offered m-line.
    fn answer(n: &mut Negotiation<u32>) -> Vec<TrackKey> {
        let accepted: Vec<(TrackKey, TrackKind)> =
            n.answered().map(|(k, _, kind)| (k.clone(), kind)).collect();
        for (_, kind) in &accepted {
            n.kind_negotiated(*kind);
        }
        accepted.into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn the_first_offer_is_due_at_once_and_only_one_is_outstanding() {
        let mut n = Negotiation::<u32>::default();
        assert!(n.offer_due(false), "the chat channel's offer");
        assert!(offer(&mut n).is_empty());
        assert!(n.want(key("a", "audio"), TrackKind::Audio));
        assert!(!n.offer_due(true), "one offer outstanding at a time");
        assert!(answer(&mut n).is_empty());
        assert!(n.offer_due(true));
        assert!(!n.offer_due(false), "later offers wait for the transport");
        assert_eq!(offer(&mut n), vec![key("a", "audio")]);
        assert!(
            !n.want(key("a", "audio"), TrackKind::Audio),
            "already forwarded"
        );
    }

    #[test]
    fn changes_while_an_offer_is_outstanding_go_into_the_next_one() {
        let mut n = Negotiation::<u32>::default();
        offer(&mut n);
        n.want(key("a", "v"), TrackKind::Video);
        n.want(key("b", "a"), TrackKind::Audio);
        assert!(!n.offer_due(true));
        answer(&mut n);
        assert!(n.offer_due(true));
        let mut first = offer(&mut n);
        first.sort();
        assert_eq!(first, vec![key("a", "v"), key("b", "a")]);
        assert!(!n.offer_due(true));
        assert_eq!(answer(&mut n).len(), 2);
        assert!(!n.offer_due(true), "nothing more wanted");
    }

    #[test]
    fn one_new_m_line_per_kind_until_that_kind_is_negotiated() {
        let mut n = Negotiation::<u32>::default();
        for p in ["a", "b", "c"] {
            n.want(key(p, "v"), TrackKind::Video);
            n.want(key(p, "a"), TrackKind::Audio);
        }
        let first = offer(&mut n);
        assert_eq!(first.len(), 2, "one of each kind: {first:?}");
        assert!(!n.offer_due(true));
        answer(&mut n);
        assert!(n.offer_due(true), "the rest are still wanted");
        assert_eq!(
            offer(&mut n).len(),
            4,
            "both kinds negotiated: all the rest at once"
        );
    }

    #[test]
    fn a_removed_track_renegotiates_and_an_unwanted_one_is_never_offered() {
        let mut n = Negotiation::<u32>::default();
        n.want(key("a", "v"), TrackKind::Video);
        n.want(key("a", "w"), TrackKind::Video);
        offer(&mut n);
        answer(&mut n);
        n.unwant(&key("a", "w"));
        assert!(n.offer_due(true), "the want alone made an offer due");
        assert!(offer(&mut n).is_empty(), "but nothing goes in it");
        answer(&mut n);
        assert_eq!(n.remove(&key("a", "v")), Some(0));
        assert!(n.offer_due(true), "a removed m-line goes in the next offer");
        assert!(n.is_empty());
        assert_eq!(n.remove(&key("a", "v")), None);
    }

    #[test]
    fn a_failed_offer_is_not_retried_until_something_changes() {
        let mut n = Negotiation::<u32>::default();
        n.offer_failed();
        assert!(!n.offer_due(true));
        n.want(key("a", "a"), TrackKind::Audio);
        assert!(n.offer_due(true));
    }
}
