//! Chat loses nothing: three participants send numbered messages while others join and leave
//! the room (by `leave` or by dropping their socket). Every participant's chat, per sender:
//! - is in the sender's order, with no gap and no duplicate, from the first message it got;
//! - for everyone still there at the end, runs through the sender's last message and starts
//!   no later than the first message sent after its chat channel was up (a participant
//!   counts as present from the moment another participant sees its own first message: its
//!   channel is open both ways then); for those there from the start, at the first message;
//! - carries the sender's id and name as the server set them, never the receiver's own.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{all_freed, start_server, wait_metrics, WAIT};
use rand::{Rng, SeedableRng};
use switchboard::load::client::Client;
use switchboard::load::wire::ChatRelay;

const ROOM: &str = "chat-order";
const SENDERS: usize = 3;
const MESSAGES: usize = 150;
const CHURNERS: u64 = 3;

async fn wait_until(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Says hello until every one of `observers` got one: the client's chat channel and theirs
/// are open then (a channel not yet open misses what is relayed to it).
async fn announce(client: &Client, observers: &[&Client]) {
    let deadline = Instant::now() + WAIT;
    for attempt in 0.. {
        assert!(
            Instant::now() < deadline,
            "{}'s hello never arrived",
            client.name
        );
        client
            .chat(&format!("hello {} {attempt}", client.name))
            .await
            .expect("chat");
        let wait = Instant::now() + Duration::from_millis(300);
        while Instant::now() < wait {
            let seen = observers
                .iter()
                .all(|o| o.chat_received().iter().any(|m| m.from.id == client.id));
            if seen {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Joins and says hello; returns once `observer` got the hello (the new participant's chat
/// channel is open both ways), with that moment.
async fn join_ready(url: &str, name: &str, observer: &Client) -> (Client, Instant) {
    let client = Client::join(url, ROOM, name).await.expect("join");
    announce(&client, &[observer]).await;
    (client, Instant::now())
}

/// The numbered messages one receiver got, per sender index.
fn numbered(got: &[ChatRelay], senders: &[(String, String)]) -> HashMap<usize, Vec<usize>> {
    let mut out: HashMap<usize, Vec<usize>> = HashMap::new();
    for m in got {
        let Some(rest) = m.text.strip_prefix("m:") else {
            continue;
        };
        let (s, n) = rest.split_once(':').expect("m:<sender>:<n>");
        let (s, n): (usize, usize) = (s.parse().unwrap(), n.parse().unwrap());
        assert_eq!(
            m.from.id, senders[s].0,
            "message {} from the wrong id",
            m.text
        );
        assert_eq!(m.from.name, senders[s].1);
        out.entry(s).or_default().push(n);
    }
    out
}

/// One receiver's chat: contiguous and ordered per sender; when `complete_from` is given,
/// through the last message and from no later than the first sent after it.
fn check(
    who: &str,
    own: Option<usize>,
    got: &[ChatRelay],
    senders: &[(String, String)],
    sent_at: &[Vec<Instant>],
    complete_from: Option<Instant>,
) -> usize {
    let per_sender = numbered(got, senders);
    let mut total = 0;
    for (s, sent_at) in sent_at.iter().enumerate() {
        let ns = per_sender.get(&s).cloned().unwrap_or_default();
        if Some(s) == own {
            assert!(ns.is_empty(), "{who} got its own messages back");
            continue;
        }
        for pair in ns.windows(2) {
            assert_eq!(
                pair[1],
                pair[0] + 1,
                "{who}: from sender {s}, {} after {} (gap, duplicate or reorder)",
                pair[1],
                pair[0]
            );
        }
        if let Some(ready) = complete_from {
            let first_due = sent_at.iter().position(|&t| t > ready).unwrap_or(MESSAGES);
            assert_eq!(
                ns.last().copied(),
                Some(MESSAGES - 1),
                "{who}: sender {s}'s last message missing ({} received)",
                ns.len()
            );
            assert!(
                ns[0] <= first_due,
                "{who}: sender {s}'s messages start at {}, but {first_due} was sent after it was there",
                ns[0]
            );
        }
        total += ns.len();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_from_several_senders_survives_joins_and_leaves_in_order() {
    let server = start_server().await;
    let url = server.ws_url();
    // An observer there from the start, then the senders.
    let observer = Client::join(&url, ROOM, "observer").await.expect("join");
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let (client, _) = join_ready(&url, &format!("sender{s}"), &observer).await;
        senders.push(Arc::new(client));
    }
    // Everyone's channel is open: the observer's hello reaches every sender.
    let all: Vec<&Client> = senders.iter().map(|s| s.as_ref()).collect();
    announce(&observer, &all).await;
    let ids: Vec<(String, String)> = senders
        .iter()
        .map(|c| (c.id.clone(), c.name.clone()))
        .collect();
    let start = Instant::now();
    let sent_at: Arc<Mutex<Vec<Vec<Instant>>>> = Arc::new(Mutex::new(vec![Vec::new(); SENDERS]));

    let sending: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(s, client)| {
            let client = client.clone();
            let sent_at = sent_at.clone();
            tokio::spawn(async move {
                for n in 0..MESSAGES {
                    sent_at.lock().unwrap()[s].push(Instant::now());
                    client.chat(&format!("m:{s}:{n}")).await.expect("chat");
                    tokio::time::sleep(Duration::from_millis(35)).await;
                }
            })
        })
        .collect();

    // Meanwhile participants join, say hello, stay a while and go; the last of each stays.
    let observer = Arc::new(observer);
    let churning: Vec<_> = (0..CHURNERS)
        .map(|c| {
            let url = url.clone();
            let observer = observer.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(c);
                let mut left = Vec::new();
                let mut round = 0;
                loop {
                    round += 1;
                    let name = format!("churner{c}r{round}");
                    let (client, ready) = join_ready(&url, &name, &observer).await;
                    let stay = Duration::from_millis(rng.random_range(200..1200));
                    tokio::time::sleep(stay).await;
                    if start.elapsed() > Duration::from_secs(4) {
                        // Stays to the end.
                        return (left, Some((name, client, ready)));
                    }
                    left.push((name, client.chat_received()));
                    if rng.random_ratio(1, 2) {
                        client.leave().await;
                    } else {
                        client.close().await;
                    }
                }
            })
        })
        .collect();

    for s in sending {
        s.await.expect("a sender failed");
    }
    let mut leavers = Vec::new();
    let mut stayers = Vec::new();
    for c in churning {
        let (left, stays) = c.await.expect("a churner failed");
        leavers.extend(left);
        stayers.extend(stays);
    }
    let sent_at = sent_at.lock().unwrap().clone();
    let everything = |c: &Client, own: Option<usize>| {
        let per_sender = numbered(&c.chat_received(), &ids);
        (0..SENDERS)
            .filter(|&s| Some(s) != own)
            .all(|s| per_sender.get(&s).and_then(|v| v.last()) == Some(&(MESSAGES - 1)))
    };
    wait_until("the last messages everywhere", || {
        everything(&observer, None)
            && senders
                .iter()
                .enumerate()
                .all(|(s, c)| everything(c, Some(s)))
            && stayers.iter().all(|(_, c, _)| everything(c, None))
    })
    .await;

    // There from the start: everything, in order.
    let mut delivered = check(
        "observer",
        None,
        &observer.chat_received(),
        &ids,
        &sent_at,
        Some(start),
    );
    for (s, c) in senders.iter().enumerate() {
        delivered += check(
            &c.name,
            Some(s),
            &c.chat_received(),
            &ids,
            &sent_at,
            Some(start),
        );
    }
    // Joined during the sending and still there: everything from when they were present.
    for (name, c, ready) in &stayers {
        delivered += check(name, None, &c.chat_received(), &ids, &sent_at, Some(*ready));
    }
    // Gone before the end: what they got is in order, without gaps or duplicates.
    for (name, got) in &leavers {
        delivered += check(name, None, got, &ids, &sent_at, None);
    }
    eprintln!(
        "{} messages from {SENDERS} senders; {} participants came and went, {} joined and stayed; {delivered} deliveries checked",
        SENDERS * MESSAGES,
        leavers.len(),
        stayers.len()
    );
    assert!(leavers.len() >= 6, "too little churn: {}", leavers.len());
    assert_eq!(stayers.len(), CHURNERS as usize);

    let observer = Arc::try_unwrap(observer)
        .ok()
        .expect("the churners are done");
    observer.leave().await;
    for (_, c, _) in stayers {
        c.leave().await;
    }
    for s in senders {
        Arc::try_unwrap(s)
            .ok()
            .expect("the senders are done")
            .leave()
            .await;
    }
    wait_metrics(&server, "everyone gone", all_freed).await;
    server.shutdown().await.expect("shutdown");
}
