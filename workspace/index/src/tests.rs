use std::collections::{BTreeMap, BTreeSet};

use gossamer_schemas::{Event, ShardCommand};
use gossamer_storage::Store;
use uuid::Uuid;

use super::*;

/// A small deterministic generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: [&str; 8] = ["alpha", "beta", "gamma", "delta", "error", "Reset", "peer", "x1"];

fn event(rng: &mut Rng, n: u128) -> Event {
    let words: Vec<&str> = (0..1 + rng.below(5)).map(|_| WORDS[rng.below(8) as usize]).collect();
    let mut labels = BTreeMap::new();
    labels.insert("app".to_string(), format!("a{}", rng.below(3)));
    let mut fields = serde_json::Map::new();
    fields.insert("n".into(), serde_json::json!(rng.below(4)));
    fields.insert("o".into(), serde_json::json!({ "k": format!("v{}", rng.below(2)) }));
    Event {
        id: Uuid::from_u128(n),
        ts: rng.below(10_000) as i64,
        stream: format!("s{}", rng.below(3)),
        level: ["info", "error"][rng.below(2) as usize].into(),
        message: words.join(" "),
        labels,
        fields,
    }
}

/// Every term of every stored event, with its documents, read from the blocks.
fn truth(index: &ShardIndex, view: &View) -> BTreeMap<Vec<u8>, BTreeSet<(u64, u32)>> {
    let mut out: BTreeMap<Vec<u8>, BTreeSet<(u64, u32)>> = BTreeMap::new();
    for b in index.store.blocks_between(0, view.indexed).unwrap() {
        for (pos, e) in index.store.read_block(b.seq).unwrap().iter().enumerate() {
            event_terms(e, &mut |t| {
                out.entry(t.to_vec()).or_default().insert((b.seq, pos as u32));
            });
        }
    }
    out
}

/// Every term's postings, as (block id, position), leaving out dirty blocks.
fn indexed(index: &ShardIndex, view: &View, terms: &BTreeSet<Vec<u8>>) -> BTreeMap<Vec<u8>, BTreeSet<(u64, u32)>> {
    let mut out: BTreeMap<Vec<u8>, BTreeSet<(u64, u32)>> = BTreeMap::new();
    for seg in view.segments.iter() {
        for t in terms {
            for d in index.postings(seg, t).unwrap() {
                let (b, pos) = seg.locate(d);
                if !view.dirty.contains(&b.id) {
                    out.entry(t.clone()).or_default().insert((b.id, pos));
                }
            }
        }
    }
    out.retain(|_, v| !v.is_empty());
    out
}

#[test]
fn postings_match_the_stored_events_through_inserts_deletes_updates_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let shard = store.shard(0).unwrap();
    let index = ShardIndex::new(shard.clone());
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut next_id = 1u128;
    let mut ids: Vec<Uuid> = Vec::new();
    let mut seq = 0;
    let mut merged = 0;
    for round in 0..120 {
        seq += 1;
        let cmd = match rng.below(10) {
            0 if !ids.is_empty() => {
                let id = ids.remove(rng.below(ids.len() as u64) as usize);
                ShardCommand::Delete { ids: vec![id] }
            }
            1 if !ids.is_empty() => {
                let id = ids[rng.below(ids.len() as u64) as usize];
                let mut labels = BTreeMap::new();
                labels.insert("app".to_string(), Some("updated".to_string()));
                ShardCommand::Update { id, labels, fields: Default::default() }
            }
            2 => ShardCommand::Retention { stream: "s2".into(), before: rng.below(2000) as i64 },
            _ => {
                let events: Vec<Event> = (0..1 + rng.below(300))
                    .map(|_| {
                        next_id += 1;
                        event(&mut rng, next_id)
                    })
                    .collect();
                ids.extend(events.iter().map(|e| e.id));
                ShardCommand::Insert { events }
            }
        };
        shard.apply(vec![(seq, cmd)]).unwrap();
        // The index runs behind, by a random amount of work.
        for _ in 0..rng.below(3) {
            merged += index.step(1 + rng.below(900)).unwrap().merged_segments;
        }
        if round % 10 == 9 {
            let view = index.view().unwrap();
            let want = truth(&index, &view);
            let terms: BTreeSet<Vec<u8>> = want.keys().cloned().collect();
            let mut want = want;
            // Dirty blocks are scanned by queries, so their postings are not compared.
            for v in want.values_mut() {
                v.retain(|(b, _)| !view.dirty.contains(b));
            }
            want.retain(|_, v| !v.is_empty());
            assert_eq!(indexed(&index, &view, &terms), want, "round {round}");
            // Again, from the buckets the first reads kept in memory.
            assert_eq!(indexed(&index, &view, &terms), want, "round {round}, kept buckets");
        }
    }
    while index.step(1 << 20).unwrap().did_work() {}
    assert!(merged > 0, "the run should have merged segments");
    let lag = index.lag().unwrap();
    assert_eq!((lag.blocks, lag.events, lag.dirty_blocks), (0, 0, 0));
    let view = index.view().unwrap();
    let want = truth(&index, &view);
    let terms = want.keys().cloned().collect();
    assert_eq!(indexed(&index, &view, &terms), want);
    assert!(view.segments.len() < 3 * FANIN, "{} segments", view.segments.len());
}

#[test]
fn a_damaged_index_reads_as_empty_and_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let shard = store.shard(3).unwrap();
    let index = ShardIndex::new(shard.clone());
    let mut rng = Rng(7);
    let events: Vec<Event> = (0..50).map(|i| event(&mut rng, i + 1)).collect();
    shard.apply(vec![(1, ShardCommand::Insert { events })]).unwrap();
    index.step(1000).unwrap();
    assert_eq!(index.view().unwrap().segments.len(), 1);
    // Garbage where a segment's description belongs, found after a restart.
    index.tree().insert(key(SEGMENT, &[1]), &b"not a segment"[..]).unwrap();
    drop((index, shard, store));
    let store = Store::open(dir.path()).unwrap();
    let shard = store.shard(3).unwrap();
    let index = ShardIndex::new(shard.clone());
    let view = index.view().unwrap();
    assert_eq!((view.indexed, view.segments.len()), (0, 0), "a damaged index must not be trusted");
    let step = index.step(1000).unwrap();
    assert!(step.reset);
    while index.step(1000).unwrap().did_work() {}
    let view = index.view().unwrap();
    let want = truth(&index, &view);
    let terms = want.keys().cloned().collect();
    assert_eq!(indexed(&index, &view, &terms), want);
    assert_eq!(index.lag().unwrap().events, 0);
}

#[test]
fn terms_cover_tokens_bigrams_labels_and_fields() {
    let mut rng = Rng(1);
    let mut e = event(&mut rng, 1);
    e.message = "Connection RESET by peer".into();
    let mut terms = BTreeSet::new();
    event_terms(&e, &mut |t| {
        terms.insert(String::from_utf8(t.to_vec()).unwrap());
    });
    for t in ["w:reset", "b:connection reset", "b:by peer", "f:n=n:0", "L:app=a0"] {
        let t = if t == "f:n=n:0" { format!("f:n=n:{}", e.fields["n"]) } else { t.to_string() };
        let t = if t.starts_with("L:") { format!("L:app={}", e.labels["app"]) } else { t };
        assert!(terms.contains(&t), "{t} missing from {terms:?}");
    }
    assert!(terms.iter().any(|t| t.starts_with("f:o.k=s:v")));
    assert_eq!(field_terms_for("n", "5.0")[1], b"f:n=n:5".to_vec());
}

#[test]
fn an_index_ahead_of_its_shard_is_rebuilt_at_start() {
    // As after a crash in which the shard tree kept less than the index tree: the index
    // covers blocks the shard will write again from its log.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let shard = store.shard(1).unwrap();
    let mut rng = Rng(11);
    let first: Vec<Event> = (0..40).map(|i| event(&mut rng, i + 1)).collect();
    shard.apply(vec![(1, ShardCommand::Insert { events: first })]).unwrap();
    let index = ShardIndex::new(shard.clone());
    while index.step(1000).unwrap().did_work() {}
    // The watermark moves past what the shard holds.
    let ahead = (5u64 << gossamer_storage::PART_BITS) | 3;
    index.tree().insert(INDEXED, &ahead.to_be_bytes()).unwrap();
    let second: Vec<Event> = (0..30).map(|i| event(&mut rng, i + 100)).collect();
    shard.apply(vec![(2, ShardCommand::Insert { events: second })]).unwrap();
    let restarted = ShardIndex::new(shard.clone());
    let step = restarted.step(1000).unwrap();
    assert!(step.reset, "the index must be found inconsistent");
    while restarted.step(1000).unwrap().did_work() {}
    let view = restarted.view().unwrap();
    let want = truth(&restarted, &view);
    let terms = want.keys().cloned().collect();
    assert_eq!(indexed(&restarted, &view, &terms), want);
    let events: u64 = view.segments.iter().map(|s| s.events).sum();
    assert_eq!(events, 70);
}

#[test]
fn a_cleared_index_reads_as_empty_before_its_keys_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let shard = store.shard(5).unwrap();
    let index = ShardIndex::new(shard.clone());
    let mut rng = Rng(11);
    let events: Vec<Event> = (0..200).map(|i| event(&mut rng, i + 1)).collect();
    shard.apply(vec![(1, ShardCommand::Insert { events })]).unwrap();
    while index.step(1000).unwrap().did_work() {}
    let before = index.view().unwrap();
    assert!(before.indexed > 0 && !before.segments.is_empty());

    // The first write of a clear (sled removes the other keys one by one after it): a
    // query must see an empty index, scanning every block, not a watermark whose
    // segments are going.
    index.retire().unwrap();
    assert!(!index.segments().unwrap().is_empty(), "the segments' keys are still there");
    let during = index.view().unwrap();
    assert_eq!((during.indexed, during.segments.len()), (0, 0));
    assert_ne!(during.generation, before.generation, "a query planned before plans again");
    assert_eq!(index.lag().unwrap().events, 200, "every event reads as not indexed");

    index.clear().unwrap();
    while index.step(1000).unwrap().did_work() {}
    assert_eq!(index.lag().unwrap().events, 0);
    assert_eq!(index.view().unwrap().indexed, before.indexed);
}
