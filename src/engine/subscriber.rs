//! A participant's subscriber PC, negotiated: what goes into the next server offer (an m-line
//! and a DownTrack for each wanted track the [`Negotiation`] lets in), what an answer starts,
//! and a forwarded track coming off again.
//!
//! [`Negotiation`]: crate::engine::negotiation::Negotiation

use std::time::Instant;

use rtc::rtp_transceiver::RTCRtpSenderId;
use tracing::{debug, warn};

use crate::engine::negotiation::TrackKey;
use crate::engine::participant::{self, Forwarded, Participant};
use crate::engine::peer::Peer;
use crate::engine::router::Router;

/// Makes the next offer: the wanted tracks it may carry go on the PC, each with a DownTrack
/// of its own; the SDP to send, or `None` if the stack could not make one.
pub fn offer(
    m: &mut Participant,
    key: usize,
    p: &mut Peer,
    peer: usize,
    router: &mut Router,
    now: Instant,
) -> Option<String> {
    for (track, _) in m.negotiation.take_for_offer() {
        forward(m, key, p, peer, router, track);
    }
    let sdp = p.pc.create_offer(None).and_then(|offer| {
        let sdp = offer.sdp.clone();
        p.pc.set_local_description(now, offer).map(|()| sdp)
    });
    match sdp {
        Ok(sdp) => {
            m.negotiation.offered();
            debug!(participant = %m.id, tracks = m.negotiation.len(), "subscriber offer made");
            Some(sdp)
        }
        Err(e) => {
            warn!(participant = %m.id, error = %e, "making the subscriber offer");
            m.negotiation.offer_failed();
            None
        }
    }
}

/// Puts a wanted track on the subscriber PC: a send-only m-line with a DownTrack of its own.
fn forward(
    m: &mut Participant,
    key: usize,
    p: &mut Peer,
    peer: usize,
    router: &mut Router,
    track: TrackKey,
) {
    let Some(rk) = router.track(&track) else {
        return;
    };
    let Some(meta) = router.receiver(rk).map(|r| &r.meta) else {
        return;
    };
    let kind = meta.kind;
    let ssrc = rand::random::<u32>() | 1;
    let transceiver = match participant::add_transceiver(&mut p.pc, meta, ssrc) {
        Ok(t) => t,
        Err(e) => {
            warn!(track = %track.1, error = %e, "cannot forward a track");
            return;
        }
    };
    let Some(dk) = router.add_downtrack(rk, key, peer, ssrc, p.connected) else {
        return;
    };
    m.downtracks_by_ssrc.insert(ssrc, dk);
    m.negotiation.forwarding(
        track,
        kind,
        Forwarded {
            downtrack: dk,
            sender: RTCRtpSenderId::from(transceiver),
            transceiver,
        },
    );
}

/// The client's answer was applied to the PC: payload types and extension ids are final, so
/// the m-lines it accepted may carry media from now on. The DownTracks that start and want a
/// keyframe at once.
pub fn answered(m: &mut Participant, p: &mut Peer, router: &mut Router) -> Vec<usize> {
    let mut started = Vec::new();
    let mut kinds = Vec::new();
    for (_, f, kind) in m.negotiation.answered() {
        let Some(codec) = router
            .downtrack(f.downtrack)
            .and_then(|d| router.receiver(d.receiver))
            .map(|r| r.meta.codec.clone())
        else {
            continue;
        };
        let Some(negotiated) = participant::negotiated_for(&mut p.pc, f, &codec) else {
            continue;
        };
        kinds.push(kind);
        if router
            .downtrack_mut(f.downtrack)
            .is_some_and(|d| d.downtrack.set_negotiated(negotiated))
        {
            started.push(f.downtrack);
        }
    }
    for kind in kinds {
        m.negotiation.kind_negotiated(kind);
    }
    debug!(participant = %m.id, tracks = m.negotiation.len(), "subscriber negotiated");
    started
}

/// A subscriber's DownTrack is gone: its m-line comes off the PC (the next offer says so).
/// False when the DownTrack was not this participant's.
pub fn unforward(m: &mut Participant, p: Option<&mut Peer>, ssrc: u32) -> bool {
    let Some(dk) = m.downtracks_by_ssrc.remove(&ssrc) else {
        return false;
    };
    let Some(f) = m
        .negotiation
        .find(|f| f.downtrack == dk)
        .and_then(|key| m.negotiation.remove(&key))
    else {
        return false;
    };
    if let Some(p) = p {
        if let Err(e) = p.pc.remove_track(f.sender) {
            debug!(error = %e, "removing a forwarded track");
        }
    }
    true
}
