//! The `chat` data channel the server opens on each subscriber PC: the transport only. What a
//! message means, who may send it and to whom it goes is decided above the engine.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const LABEL: &str = "chat";

/// Messages kept for a channel that is not open yet (its participant joined a moment ago):
/// how many, and how old at most when it opens.
const BACKLOG_MESSAGES: usize = 64;
const BACKLOG_AGE: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct ChatChannel {
    /// The channel's id on the subscriber PC, once created.
    pub id: Option<usize>,
    open: bool,
    backlog: VecDeque<(Instant, Arc<str>)>,
}

impl ChatChannel {
    pub fn is(&self, id: usize) -> bool {
        self.id == Some(id)
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Keeps a message for when the channel opens; the oldest goes past the bound.
    pub fn hold(&mut self, text: Arc<str>, now: Instant) {
        if self.backlog.len() == BACKLOG_MESSAGES {
            self.backlog.pop_front();
        }
        self.backlog.push_back((now, text));
    }

    /// The channel opened: what was held for it and is still fresh, in order.
    pub fn opened(&mut self, now: Instant) -> Vec<Arc<str>> {
        self.open = true;
        std::mem::take(&mut self.backlog)
            .into_iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) <= BACKLOG_AGE)
            .map(|(_, text)| text)
            .collect()
    }

    pub fn closed(&mut self) {
        self.open = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_waits_for_the_channel_is_bounded_in_number_and_age() {
        let t0 = Instant::now();
        let mut chat = ChatChannel::default();
        chat.hold(Arc::from("stale"), t0);
        for i in 0..BACKLOG_MESSAGES {
            chat.hold(Arc::from(format!("m{i}")), t0 + Duration::from_secs(5));
        }
        let sent = chat.opened(t0 + Duration::from_secs(12));
        assert_eq!(sent.len(), BACKLOG_MESSAGES, "the oldest made room");
        assert_eq!(&*sent[0], "m0");
        assert!(chat.is_open());
        let mut late = ChatChannel::default();
        late.hold(Arc::from("old"), t0);
        assert!(late.opened(t0 + Duration::from_secs(11)).is_empty());
    }
}
