//! Two interceptors at the two ends of a server peer connection's chain.
//!
//! [`FeedbackInterceptor`], nearest the application: marks inbound RTCP compounds holding a
//! keyframe request (PLI or FIR), a NACK or bandwidth feedback (transport-wide, REMB) for
//! delivery to the application, and counts the NACKs received.
//!
//! [`UplinkReports`], nearest the network (inbound packets reach it first, and what the stack's
//! own interceptors generate passes it last): counts the NACKs the stack sends to publishers,
//! and leaves a publisher's RID-tagged (simulcast) streams out of our receiver reports. A
//! browser writes a stream's RID and MID header extensions until a report acknowledges the
//! stream, and `rtc` 0.21 forgets which SSRC is which RID whenever the publisher renegotiates
//! (its `start_rtp` resets the receive codings): a stream whose RID is no longer written would
//! then be dropped for good, say when the publisher starts sharing its screen. Unacknowledged,
//! every packet keeps naming its layer (a dozen bytes), and renegotiation costs nothing. The
//! browser's congestion control runs on transport-wide feedback, not on these reports.
//!
//! webrtc-rs stops inbound RTCP at the end of the interceptor chain unless an interceptor
//! vouches for it. The SFU needs subscribers' PLI/FIR to reach the DownTrack, which relays them
//! (rate-limited) to the publisher, and their NACKs, which the worker answers from the track's
//! shared history. The packet is passed on unchanged.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
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

/// What the worker acts on: keyframe requests, NACKs, and the feedback its bandwidth
/// estimate runs on.
fn for_the_worker(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    is_keyframe_request(packet)
        || any.is::<TransportLayerNack>()
        || any.is::<TransportLayerCc>()
        || any.is::<ReceiverEstimatedMaximumBitrate>()
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
            if packets.iter().any(|p| for_the_worker(p.as_ref())) {
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

/// See the module's notes: the first interceptor inbound, the last outbound.
pub struct UplinkReports {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
    metrics: Arc<Metrics>,
    /// The ids the remote's streams carry their RID under.
    rid_ids: Vec<u8>,
    /// SSRCs seen with a RID: simulcast layers, left out of receiver reports.
    simulcast: HashSet<u32>,
}

impl UplinkReports {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        UplinkReports {
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
            metrics,
            rid_ids: Vec::new(),
            simulcast: HashSet::new(),
        }
    }

    /// Our receiver reports without blocks about simulcast streams.
    fn without_simulcast_blocks(&self, packet: &mut Packet) {
        let Packet::Rtcp(packets) = packet else {
            return;
        };
        for p in packets.iter_mut() {
            let Some(rr) = p.as_any().downcast_ref::<ReceiverReport>() else {
                continue;
            };
            if rr.reports.iter().any(|r| self.simulcast.contains(&r.ssrc)) {
                let mut kept = rr.clone();
                kept.reports.retain(|r| !self.simulcast.contains(&r.ssrc));
                *p = Box::new(kept);
            }
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for UplinkReports {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtp(rtp) = &msg.message.packet {
            if !self.rid_ids.is_empty()
                && !self.simulcast.contains(&rtp.header.ssrc)
                && self
                    .rid_ids
                    .iter()
                    .any(|&id| rtp.header.get_extension(id).is_some())
            {
                self.simulcast.insert(rtp.header.ssrc);
            }
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        Metrics::add(&self.metrics.nacks_sent, count_nacks(&msg.message.packet));
        if !self.simulcast.is_empty() {
            self.without_simulcast_blocks(&mut msg.message.packet);
        }
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for UplinkReports {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        for ext in &info.rtp_header_extensions {
            if ext.uri == rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI {
                if let Ok(id) = u8::try_from(ext.id) {
                    if !self.rid_ids.contains(&id) {
                        self.rid_ids.push(id);
                    }
                }
            }
        }
    }
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
