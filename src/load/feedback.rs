//! The client's RTCP interceptor: lets keyframe requests and NACKs through to the application
//! and counts the NACKs that pass, both ways, in the client's [`Metrics`].
//!
//! webrtc-rs ends inbound RTCP at the end of its interceptor chain unless an interceptor marks
//! a packet for the application. A publisher needs the server's PLI/FIR (to send a keyframe),
//! and a test may want to see NACKs; sender and receiver reports stay inside the chain.
//!
//! Packets are told apart by their RTCP header (RFC 4585 §6.1: packet type and FMT), not by
//! their decoded type, and are passed on unchanged.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::header::{PacketType, FORMAT_FIR, FORMAT_PLI, FORMAT_TLN};
use rtc::sansio::Protocol;

use crate::metrics::Metrics;

/// Payload-specific feedback asking for a keyframe: a PLI (RFC 4585 §6.3.1) or a FIR
/// (RFC 5104 §4.3.1).
pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let header = packet.header();
    header.packet_type == PacketType::PayloadSpecificFeedback
        && (header.count == FORMAT_PLI || header.count == FORMAT_FIR)
}

/// Transport-layer feedback asking for packets again: a generic NACK (RFC 4585 §6.2.1).
pub fn is_nack(packet: &dyn rtc::rtcp::Packet) -> bool {
    let header = packet.header();
    header.packet_type == PacketType::TransportSpecificFeedback && header.count == FORMAT_TLN
}

/// NACK packets in one RTCP compound (0 for RTP).
fn nacks_in(packet: &Packet) -> u64 {
    let Packet::Rtcp(compound) = packet else {
        return 0;
    };
    compound.iter().filter(|p| is_nack(p.as_ref())).count() as u64
}

/// Whether the application should see this compound.
fn wanted(packet: &Packet) -> bool {
    let Packet::Rtcp(compound) = packet else {
        return false;
    };
    compound
        .iter()
        .any(|p| is_keyframe_request(p.as_ref()) || is_nack(p.as_ref()))
}

/// Passes every packet on; marks wanted RTCP for the application and counts NACKs.
pub struct ClientFeedback {
    inbound: VecDeque<TaggedPacket>,
    outbound: VecDeque<TaggedPacket>,
    metrics: Arc<Metrics>,
}

impl ClientFeedback {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        ClientFeedback {
            inbound: VecDeque::new(),
            outbound: VecDeque::new(),
            metrics,
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ClientFeedback {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        let packet = &msg.message.packet;
        Metrics::add(&self.metrics.nacks_received, nacks_in(packet));
        if wanted(packet) {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.inbound.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.inbound.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        Metrics::add(&self.metrics.nacks_sent, nacks_in(&msg.message.packet));
        self.outbound.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.outbound.pop_front()
    }
}

impl Interceptor for ClientFeedback {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::payload_feedbacks::full_intra_request::{FirEntry, FullIntraRequest};
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::rtcp::payload_feedbacks::slice_loss_indication::SliceLossIndication;
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};

    fn pli() -> PictureLossIndication {
        PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc: 2,
        }
    }

    fn nack() -> TransportLayerNack {
        TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 2,
            nacks: vec![NackPair {
                packet_id: 7,
                lost_packets: 0,
            }],
        }
    }

    #[test]
    fn keyframe_requests_and_nacks_are_told_from_other_feedback() {
        let fir = FullIntraRequest {
            sender_ssrc: 1,
            media_ssrc: 2,
            fir: vec![FirEntry {
                ssrc: 2,
                sequence_number: 1,
            }],
        };
        assert!(is_keyframe_request(&pli()));
        assert!(is_keyframe_request(&fir));
        assert!(!is_keyframe_request(&nack()));
        assert!(!is_keyframe_request(&ReceiverReport::default()));
        let sli = SliceLossIndication {
            sender_ssrc: 1,
            media_ssrc: 2,
            sli_entries: vec![],
        };
        assert!(!is_keyframe_request(&sli));
        assert!(is_nack(&nack()));
        assert!(!is_nack(&pli()));
    }

    #[test]
    fn counts_nacks_and_wants_only_feedback() {
        let compound: Vec<Box<dyn rtc::rtcp::Packet>> = vec![
            Box::new(ReceiverReport::default()),
            Box::new(nack()),
            Box::new(nack()),
        ];
        let packet = Packet::Rtcp(compound);
        assert_eq!(nacks_in(&packet), 2);
        assert!(wanted(&packet));
        let reports = Packet::Rtcp(vec![Box::new(ReceiverReport::default())]);
        assert_eq!(nacks_in(&reports), 0);
        assert!(!wanted(&reports));
        assert!(wanted(&Packet::Rtcp(vec![Box::new(pli())])));
    }
}
