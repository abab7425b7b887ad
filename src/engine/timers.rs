//! A worker's timers: one deadline per key (a peer connection, a Receiver's deferred keyframe
//! request), rescheduled after every interaction, due ones taken in order.
//!
//! Rescheduling pushes a new heap entry and bumps the key's generation; stale entries are
//! skipped when they surface, so a reschedule costs O(log n) and nothing is searched.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::Instant;

#[derive(Debug)]
pub struct Timers<K> {
    heap: BinaryHeap<Reverse<(Instant, u64, K)>>,
    /// The live deadline of each key, with the generation of its heap entry.
    current: HashMap<K, (Instant, u64)>,
    next_generation: u64,
}

impl<K: Copy + Eq + Hash + Ord> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            current: HashMap::new(),
            next_generation: 0,
        }
    }
}

impl<K: Copy + Eq + Hash + Ord> Timers<K> {
    /// Sets `key`'s deadline (replacing any earlier one); `None` cancels it.
    pub fn set(&mut self, key: K, at: Option<Instant>) {
        match at {
            None => {
                self.current.remove(&key);
            }
            Some(at) => {
                if self.current.get(&key).is_some_and(|(t, _)| *t == at) {
                    return;
                }
                let generation = self.next_generation;
                self.next_generation += 1;
                self.current.insert(key, (at, generation));
                self.heap.push(Reverse((at, generation, key)));
            }
        }
        // Stale entries pile up when deadlines move a lot: rebuild once they dominate.
        if self.heap.len() > 64 && self.heap.len() > 4 * self.current.len() {
            self.heap = self
                .current
                .iter()
                .map(|(k, (at, g))| Reverse((*at, *g, *k)))
                .collect();
        }
    }

    pub fn cancel(&mut self, key: K) {
        self.set(key, None);
    }

    /// The earliest live deadline.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.skip_stale();
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Takes the next key whose deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        self.skip_stale();
        let Reverse((at, _, key)) = *self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        self.current.remove(&key);
        Some(key)
    }

    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    fn skip_stale(&mut self) {
        while let Some(Reverse((at, generation, key))) = self.heap.peek() {
            if self.current.get(key) == Some(&(*at, *generation)) {
                return;
            }
            self.heap.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn due_keys_come_out_in_deadline_order_and_only_once() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut timers = Timers::default();
        timers.set(1u32, Some(ms(30)));
        timers.set(2, Some(ms(10)));
        timers.set(3, Some(ms(20)));
        assert_eq!(timers.next_deadline(), Some(ms(10)));
        assert_eq!(timers.pop_due(ms(5)), None);
        assert_eq!(timers.pop_due(ms(25)), Some(2));
        assert_eq!(timers.pop_due(ms(25)), Some(3));
        assert_eq!(timers.pop_due(ms(25)), None);
        assert_eq!(timers.next_deadline(), Some(ms(30)));
        assert_eq!(timers.pop_due(ms(30)), Some(1));
        assert!(timers.is_empty());
        assert_eq!(timers.next_deadline(), None);
    }

    #[test]
    fn a_reschedule_replaces_the_old_deadline_and_a_cancel_removes_it() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut timers = Timers::default();
        timers.set(1u32, Some(ms(10)));
        timers.set(1, Some(ms(50)));
        timers.set(2, Some(ms(20)));
        timers.cancel(2);
        assert_eq!(timers.next_deadline(), Some(ms(50)));
        assert_eq!(timers.pop_due(ms(40)), None);
        // Moved earlier again: the newest deadline wins.
        timers.set(1, Some(ms(15)));
        assert_eq!(timers.pop_due(ms(40)), Some(1));
        assert_eq!(timers.pop_due(ms(100)), None);
        assert_eq!(timers.len(), 0);
    }

    #[test]
    fn deadlines_in_the_past_are_due_at_once() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.set(9u32, Some(t0));
        assert_eq!(timers.pop_due(t0 + Duration::from_millis(1)), Some(9));
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        for i in 0..10_000u64 {
            timers.set(i % 10, Some(t0 + Duration::from_micros(i)));
        }
        assert_eq!(timers.len(), 10);
        assert!(timers.heap.len() <= 65);
        let mut due = Vec::new();
        while let Some(k) = timers.pop_due(t0 + Duration::from_secs(1)) {
            due.push(k);
        }
        due.sort();
        assert_eq!(due, (0..10).collect::<Vec<_>>());
    }
}
