//! Marks inbound RTCP compounds holding a keyframe request (PLI or FIR) or a NACK for delivery
//! to the application, and counts the NACKs that pass, both ways.
//!
//! webrtc-rs stops inbound RTCP at the end of the interceptor chain unless an interceptor
//! vouches for it. The SFU needs subscribers' PLI/FIR to reach the DownTrack, which relays them
//! (rate-limited) to the publisher, and their NACKs, which the worker answers from the track's
//! shared history. The packet is passed on unchanged.

use std::collections::VecDeque;
use std::time::Instant;

use interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

use std::sync::Arc;

use crate::metrics::Metrics;

pub struct FeedbackInterceptor {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
    metrics: Arc<Metrics>,
}

impl FeedbackInterceptor {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        FeedbackInterceptor {
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
            metrics,
        }
    }
}

fn count_nacks(packet: &Packet) -> u64 {
    match packet {
        Packet::Rtcp(packets) => packets
            .iter()
            .filter(|p| p.as_any().is::<TransportLayerNack>())
            .count() as u64,
        _ => 0,
    }
}

/// True when an RTCP packet asks for a keyframe.
pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackInterceptor {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        Metrics::add(
            &self.metrics.nacks_received,
            count_nacks(&msg.message.packet),
        );
        if let Packet::Rtcp(packets) = &msg.message.packet {
            if packets
                .iter()
                .any(|p| is_keyframe_request(p.as_ref()) || p.as_any().is::<TransportLayerNack>())
            {
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        Metrics::add(&self.metrics.nacks_sent, count_nacks(&msg.message.packet));
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for FeedbackInterceptor {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
