use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap as Model;

fn event(id: u128, ts: i64, stream: &str) -> Event {
    Event {
        id: Uuid::from_u128(id),
        ts,
        stream: stream.into(),
        level: "info".into(),
        message: format!("event {id}"),
        labels: Default::default(),
        fields: Default::default(),
    }
}

fn all_events(s: &ShardStore) -> Vec<Event> {
    let mut out = Vec::new();
    s.for_each_block(i64::MIN, i64::MAX, false, |_, decode| {
        out.extend(decode().unwrap());
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

#[test]
fn replayed_sequences_and_known_ids_store_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = store.shard(3).unwrap();
    let first = ShardCommand::Insert { events: vec![event(1, 10, "a"), event(2, 20, "b")] };
    assert_eq!(s.apply(&[(5, first.clone())]).unwrap().stored, 2);
    // The same message redelivered: skipped by sequence.
    assert_eq!(s.apply(&[(5, first.clone())]).unwrap(), Applied { replayed: 1, ..Default::default() });
    // The same events republished under a new sequence: skipped by id.
    let again = ShardCommand::Insert { events: vec![event(2, 20, "b"), event(3, 30, "b"), event(3, 30, "b")] };
    let out = s.apply(&[(6, again)]).unwrap();
    assert_eq!((out.stored, out.duplicates), (1, 2));
    assert_eq!(s.event_count().unwrap(), 3);
    assert_eq!(s.applied_seq().unwrap(), 6);
    assert_eq!(s.stream_counts().unwrap(), Model::from([("a".into(), 1), ("b".into(), 2)]));
    assert_eq!(s.get(&Uuid::from_u128(3)).unwrap().unwrap().ts, 30);
    assert!(s.get(&Uuid::from_u128(9)).unwrap().is_none());
}

#[test]
fn blocks_outside_the_time_range_are_skipped_without_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap().shard(0).unwrap();
    s.apply(&[(1, ShardCommand::Insert { events: vec![event(1, 100, "a"), event(2, 200, "a")] })]).unwrap();
    s.apply(&[(2, ShardCommand::Insert { events: vec![event(3, 300, "a")] })]).unwrap();
    let mut seen = Vec::new();
    s.for_each_block(250, 1000, true, |meta, _| {
        seen.push(meta.seq);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(seen, vec![2]);
}

/// Reopens the store. sled's background flusher can keep the file lock for a moment
/// after the last handle is dropped, so wait for the lock with a deadline.
fn reopen_store(path: &std::path::Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(path) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::yield_now();
            }
            Err(e) => panic!("reopening the store: {e}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Random batches (with repeated ids and replayed sequences) and reopens, checked
    /// against a map of id -> event.
    #[test]
    fn store_matches_a_model_across_reopens(
        ops in proptest::collection::vec((proptest::collection::vec(0u128..40, 0..8), any::<bool>(), any::<bool>()), 1..30)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut model: Model<u128, i64> = Model::new();
        let mut seq = 0u64;
        for (ids, replay, reopen) in ops {
            let events: Vec<Event> = ids.iter().map(|&i| event(i, i as i64 * 7, "s")).collect();
            // A replay re-sends the last sequence with other content: it must be ignored.
            let fresh = !(replay && seq > 0);
            if fresh {
                seq += 1;
                for &i in &ids { model.entry(i).or_insert(i as i64 * 7); }
            }
            store.shard(1).unwrap().apply(&[(seq, ShardCommand::Insert { events })]).unwrap();
            if reopen {
                drop(store);
                store = reopen_store(dir.path());
            }
        }
        let s = store.shard(1).unwrap();
        let mut got: Vec<(u128, i64)> = all_events(&s).iter().map(|e| (e.id.as_u128(), e.ts)).collect();
        got.sort();
        let want: Vec<(u128, i64)> = model.into_iter().collect();
        prop_assert_eq!(s.event_count().unwrap(), want.len() as u64);
        prop_assert_eq!(got, want);
        prop_assert_eq!(s.applied_seq().unwrap(), seq);
    }
}
