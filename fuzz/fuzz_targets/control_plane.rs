//! The control plane (`room::Registry` with a recording fake media plane) fed random
//! sequences of join, publish, unpublish, announce, mute, publisher offers and leave, checked
//! against the model the property test uses (`tests/control_plane/model.rs`) after every step.
//!
//! Input: three bytes per step (operation, person, parameter).
#![no_main]

#[path = "../../tests/control_plane/model.rs"]
mod model;

use libfuzzer_sys::fuzz_target;
use model::{offer_sdp, Harness, Op};

const PEOPLE: usize = 6;

fn track(b: u8) -> String {
    format!("t{}", b % 5)
}

fuzz_target!(|data: &[u8]| {
    let mut h = Harness::new(PEOPLE);
    for step in data.chunks_exact(3).take(400) {
        let (kind, who, p) = (step[0], usize::from(step[1]) % PEOPLE, step[2]);
        let op = match kind % 8 {
            0 | 1 => Op::Join {
                who,
                room: ["a", "b", "c"][usize::from(p % 3)].to_string(),
            },
            2 => Op::Publish {
                who,
                track: track(p),
                video: p & 0x80 != 0,
            },
            3 => Op::Unpublish {
                who,
                track: track(p),
            },
            4 => Op::Announce {
                who,
                tracks: (0..5)
                    .filter(|i| p & (1 << i) != 0)
                    .map(|i| format!("t{i}"))
                    .collect(),
            },
            5 => Op::Mute {
                who,
                track: track(p),
                muted: p & 0x80 != 0,
            },
            6 => {
                // Up to four sections from the parameter's bits: track, kind, sending.
                let sections: Vec<(String, bool, bool)> = (0..(p % 5))
                    .map(|i| {
                        let bits = p.rotate_left(u32::from(i) * 2);
                        (track(bits >> 3), bits & 1 != 0, bits & 2 != 0)
                    })
                    .collect();
                Op::Offer {
                    who,
                    sdp: offer_sdp(&sections),
                }
            }
            _ => Op::Leave { who },
        };
        h.apply(&op);
    }
    h.finish();
});
