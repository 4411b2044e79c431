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
    assert_eq!(s.apply(vec![(5, first.clone())]).unwrap().stored, 2);
    // The same message redelivered: skipped by sequence.
    assert_eq!(s.apply(vec![(5, first.clone())]).unwrap(), Applied { replayed: 1, ..Default::default() });
    // The same events republished under a new sequence: skipped by id.
    let again = ShardCommand::Insert { events: vec![event(2, 20, "b"), event(3, 30, "b"), event(3, 30, "b")] };
    let out = s.apply(vec![(6, again)]).unwrap();
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
    s.apply(vec![(1, ShardCommand::Insert { events: vec![event(1, 100, "a"), event(2, 200, "a")] })]).unwrap();
    s.apply(vec![(2, ShardCommand::Insert { events: vec![event(3, 300, "a")] })]).unwrap();
    let mut seen = Vec::new();
    s.for_each_block(250, 1000, true, |meta, _| {
        seen.push(meta.seq);
        ControlFlow::Continue(())
    })
    .unwrap();
    // The block added by sequence 2, part 0.
    assert_eq!(seen, vec![2 << 16]);
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

#[derive(Debug, Clone)]
enum Op {
    Insert(Vec<u128>),
    /// Blocks sealed by ingest, one per list of ids.
    Sealed(Vec<Vec<u128>>),
    Delete(Vec<u128>),
    /// Delete the events whose id is a multiple of this, via a compiled predicate.
    DeleteWhere(u128),
    Update(u128, String),
    /// Stream `s` or `t`, before this ts.
    Retention(bool, i64),
    /// Re-send the last sequence with other content: must be ignored.
    Replay(Vec<u128>),
    Reopen,
    /// These commands applied in one call, at consecutive sequences.
    Together(Vec<Op>),
}

fn op() -> impl Strategy<Value = Op> {
    let ids = proptest::collection::vec(0u128..40, 0..8);
    prop_oneof![
        4 => ids.clone().prop_map(Op::Insert),
        3 => proptest::collection::vec(proptest::collection::vec(0u128..40, 1..6), 1..3).prop_map(Op::Sealed),
        1 => ids.clone().prop_map(Op::Delete),
        1 => (2u128..6).prop_map(Op::DeleteWhere),
        1 => (0u128..40, "[a-z]{1,4}").prop_map(|(i, v)| Op::Update(i, v)),
        1 => (any::<bool>(), 0i64..300).prop_map(|(s, b)| Op::Retention(s, b)),
        1 => ids.prop_map(Op::Replay),
        1 => Just(Op::Reopen),
    ]
}

/// [`op`], or a few of its commands applied in one call.
fn model_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => op(),
        1 => proptest::collection::vec(op(), 2..5)
            .prop_map(|ops| Op::Together(ops.into_iter().filter(|o| !matches!(o, Op::Reopen | Op::Replay(_))).collect())),
    ]
}

/// The blocks ingest would seal from these lists of ids.
fn sealed(blocks: &[Vec<u128>]) -> ShardCommand {
    let blocks = blocks
        .iter()
        .map(|ids| {
            let mut events: Vec<Event> = ids.iter().map(|&i| model_event(i)).collect();
            events.sort_by_key(|e| e.ts);
            SealedBlock::seal(&events).unwrap()
        })
        .collect();
    ShardCommand::Blocks { blocks }
}

fn model_event(id: u128) -> Event {
    let mut e = event(id, id as i64 * 7, if id.is_multiple_of(2) { "s" } else { "t" });
    e.labels.insert("v".into(), String::new());
    e
}

/// The command for `op` (not a reopen, a replay or a group), and its effect on the
/// model of id -> (ts, stream, label).
fn step(op: &Op, model: &mut Model<u128, (i64, String, String)>) -> ShardCommand {
    match op {
        Op::Insert(ids) => {
            for &i in ids {
                let e = model_event(i);
                model.entry(i).or_insert((e.ts, e.stream.clone(), String::new()));
            }
            ShardCommand::Insert { events: ids.iter().map(|&i| model_event(i)).collect() }
        }
        Op::Sealed(blocks) => {
            for &i in blocks.iter().flatten() {
                let e = model_event(i);
                model.entry(i).or_insert((e.ts, e.stream.clone(), String::new()));
            }
            sealed(blocks)
        }
        Op::Delete(ids) => {
            for i in ids {
                model.remove(i);
            }
            ShardCommand::Delete { ids: ids.iter().map(|&i| Uuid::from_u128(i)).collect() }
        }
        Op::DeleteWhere(m) => {
            model.retain(|i, _| !i.is_multiple_of(*m));
            ShardCommand::DeleteWhere { q: m.to_string(), from: i64::MIN, to: i64::MAX }
        }
        Op::Update(i, v) => {
            if let Some(entry) = model.get_mut(i) {
                entry.2 = v.clone();
            }
            ShardCommand::Update {
                id: Uuid::from_u128(*i),
                labels: [("v".to_string(), Some(v.clone()))].into(),
                fields: Default::default(),
            }
        }
        Op::Retention(s, before) => {
            let stream = if *s { "s" } else { "t" };
            model.retain(|_, (ts, st, _)| !(st == stream && *ts < *before));
            ShardCommand::Retention { stream: stream.into(), before: *before }
        }
        Op::Reopen | Op::Replay(_) | Op::Together(_) => unreachable!("handled by the caller"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Random inserts (with repeated ids, one by one or in sealed blocks), deletes by id and by predicate, updates,
    /// retention, replayed sequences and reopens, checked against a map of id ->
    /// (ts, stream, label).
    #[test]
    fn store_matches_a_model_across_reopens(ops in proptest::collection::vec(model_op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut model: Model<u128, (i64, String, String)> = Model::new();
        let mut seq = 0u64;
        let compile = |q: &str| -> Option<Predicate> {
            let m: u128 = q.parse().ok()?;
            Some(Box::new(move |e: &Event| e.id.as_u128().is_multiple_of(m)))
        };
        for op in ops {
            let cmd = match &op {
                Op::Reopen => {
                    drop(store);
                    store = reopen_store(dir.path());
                    continue;
                }
                Op::Replay(ids) => {
                    if seq == 0 {
                        continue;
                    }
                    let events = ids.iter().map(|&i| model_event(i)).collect();
                    store.shard(1).unwrap().apply(vec![(seq, ShardCommand::Insert { events })]).unwrap();
                    continue;
                }
                Op::Together(ops) => {
                    let mut cmds = Vec::new();
                    for op in ops {
                        seq += 1;
                        cmds.push((seq, step(op, &mut model)));
                    }
                    store.shard(1).unwrap().apply_with(cmds, &compile).unwrap();
                    continue;
                }
                op => step(op, &mut model),
            };
            seq += 1;
            store.shard(1).unwrap().apply_with(vec![(seq, cmd)], &compile).unwrap();
        }
        let s = store.shard(1).unwrap();
        let mut got: Vec<(u128, (i64, String, String))> = all_events(&s)
            .iter()
            .map(|e| (e.id.as_u128(), (e.ts, e.stream.clone(), e.labels.get("v").cloned().unwrap_or_default())))
            .collect();
        got.sort();
        let want: Vec<(u128, (i64, String, String))> = model.clone().into_iter().collect();
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(s.event_count().unwrap(), want.len() as u64);
        let mut per_stream: Model<String, u64> = Model::new();
        for (_, (_, st, _)) in &want {
            *per_stream.entry(st.clone()).or_default() += 1;
        }
        prop_assert_eq!(s.stream_counts().unwrap(), per_stream);
        for i in 0..40u128 {
            prop_assert_eq!(s.get(&Uuid::from_u128(i)).unwrap().is_some(), model.contains_key(&i));
        }
        prop_assert_eq!(s.applied_seq().unwrap(), seq);
        // The separate headers list exactly the blocks there are, with their bounds.
        let mut from_blocks = Vec::new();
        s.for_each_block(i64::MIN, i64::MAX, false, |m, _| {
            from_blocks.push((m.seq, m.min_ts, m.max_ts, m.count));
            ControlFlow::Continue(())
        })
        .unwrap();
        let from_heads: Vec<_> = s.block_metas(i64::MIN, i64::MAX).unwrap().iter().map(|m| (m.seq, m.min_ts, m.max_ts, m.count)).collect();
        prop_assert_eq!(from_heads, from_blocks);
    }
}

#[test]
fn several_commands_in_one_call_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap().shard(0).unwrap();
    s.apply(vec![(1, ShardCommand::Insert { events: vec![event(1, 10, "a"), event(2, 20, "a")] })]).unwrap();
    let out = s
        .apply(vec![
            (2, ShardCommand::Insert { events: vec![event(3, 30, "a")] }),
            (3, ShardCommand::Delete { ids: vec![Uuid::from_u128(1), Uuid::from_u128(3)] }),
            (4, ShardCommand::Insert { events: vec![event(1, 11, "a")] }),
            (5, ShardCommand::Retention { stream: "a".into(), before: 15 }),
        ])
        .unwrap();
    assert_eq!((out.stored, out.deleted), (2, 3));
    let left: Vec<u128> = all_events(&s).iter().map(|e| e.id.as_u128()).collect();
    assert_eq!(left, vec![2]);
    assert_eq!(s.command_result(3).unwrap(), Some(2));
    assert_eq!(s.command_result(5).unwrap(), Some(1));
    assert_eq!(s.event_count().unwrap(), 1);
}

#[test]
fn new_events_go_into_small_time_ordered_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap().shard(0).unwrap();
    // 1,300 events out of time order in one message: three blocks, each a time slice.
    let events: Vec<Event> = (0..1300u128).map(|i| event(i, ((i * 7919) % 1300) as i64, "s")).collect();
    s.apply(vec![(9, ShardCommand::Insert { events })]).unwrap();
    let metas = s.block_metas(i64::MIN, i64::MAX).unwrap();
    let bounds: Vec<(u64, i64, i64, u32)> = metas.iter().map(|m| (m.seq, m.min_ts, m.max_ts, m.count)).collect();
    assert_eq!(bounds, vec![(9 << 16, 0, 511, 512), ((9 << 16) | 1, 512, 1023, 512), ((9 << 16) | 2, 1024, 1299, 276)]);
    assert_eq!(s.get(&Uuid::from_u128(5)).unwrap().unwrap().ts, (5 * 7919) % 1300);
}

#[test]
fn the_id_filter_never_forgets_and_rarely_guesses() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = store.shard(0).unwrap();
    let stored: Vec<Event> = (0..2000u128).map(|i| event(i * 2, 0, "s")).collect();
    s.apply(vec![(1, ShardCommand::Insert { events: stored })]).unwrap();
    // A second handle on the same shard shares the filter and sees every stored id.
    let again = store.shard(0).unwrap();
    let out = again.apply(vec![(2, ShardCommand::Insert { events: (0..4000u128).map(|i| event(i, 0, "s")).collect() })]).unwrap();
    assert_eq!((out.stored, out.duplicates), (2000, 2000));
    let f = s.filter.lock().unwrap();
    let f = f.as_ref().unwrap();
    let false_maybes = (10_000u128..20_000).filter(|i| f.may_contain(&Uuid::from_u128(*i))).count();
    assert!(false_maybes < 200, "{false_maybes} false positives in 10,000");
}

/// What a user sees of a shard: its events (id, ts, stream, label), counters and
/// applied sequence.
type Seen = (Vec<(u128, i64, String, Option<String>)>, u64, Model<String, u64>, u64);

fn seen(s: &ShardStore) -> Seen {
    let mut events: Vec<_> =
        all_events(s).iter().map(|e| (e.id.as_u128(), e.ts, e.stream.clone(), e.labels.get("v").cloned())).collect();
    events.sort();
    (events, s.event_count().unwrap(), s.stream_counts().unwrap(), s.applied_seq().unwrap())
}

fn command(op: &Op) -> Option<ShardCommand> {
    Some(match op {
        Op::Insert(ids) | Op::Replay(ids) => ShardCommand::Insert { events: ids.iter().map(|&i| model_event(i)).collect() },
        Op::Sealed(blocks) => sealed(blocks),
        Op::Delete(ids) => ShardCommand::Delete { ids: ids.iter().map(|&i| Uuid::from_u128(i)).collect() },
        Op::DeleteWhere(m) => ShardCommand::DeleteWhere { q: m.to_string(), from: i64::MIN, to: i64::MAX },
        Op::Update(i, v) => ShardCommand::Update {
            id: Uuid::from_u128(*i),
            labels: [("v".to_string(), Some(v.clone()))].into(),
            fields: Default::default(),
        },
        Op::Retention(s, before) => ShardCommand::Retention { stream: if *s { "s" } else { "t" }.into(), before: *before },
        Op::Reopen | Op::Together(_) => return None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// A full export, then incremental ones, taken between random commands: restoring
    /// the full one and the incrementals up to any point into an empty shard gives the
    /// shard exactly as it was at that point, and the restored shard goes on applying.
    #[test]
    fn a_full_export_and_its_incrementals_restore_each_point(
        phases in proptest::collection::vec(proptest::collection::vec(op(), 0..12), 2..5),
        after in proptest::collection::vec(0u128..60, 1..6),
    ) {
        let compile = |q: &str| -> Option<Predicate> {
            let m: u128 = q.parse().ok()?;
            Some(Box::new(move |e: &Event| e.id.as_u128().is_multiple_of(m)))
        };
        let dir = tempfile::tempdir().unwrap();
        let source = Store::open(dir.path()).unwrap().shard(3).unwrap();
        let mut seq = 0;
        let mut exports: Vec<(Vec<Record>, Seen)> = Vec::new();
        let mut since = None;
        for phase in &phases {
            for op in phase {
                let Some(cmd) = command(op) else { continue };
                seq += 1;
                source.apply_with(vec![(seq, cmd)], &compile).unwrap();
            }
            let mut records = Vec::new();
            let done = source.export(since, &mut |r| { records.push(r); Ok(()) }).unwrap();
            prop_assert_eq!(done.applied, seq);
            prop_assert_eq!(done.records, records.len() as u64);
            since = Some(done.applied);
            exports.push((records, seen(&source)));
        }
        for upto in 0..exports.len() {
            let dir = tempfile::tempdir().unwrap();
            let target = Store::open(dir.path()).unwrap().shard(3).unwrap();
            let mut r = target.begin_restore().unwrap();
            for (records, _) in &exports[..=upto] {
                for rec in records {
                    r.record(rec.clone()).unwrap();
                }
            }
            prop_assert_eq!(r.finish().unwrap(), exports[upto].1 .3);
            prop_assert_eq!(&seen(&target), &exports[upto].1);
            for i in 0..40u128 {
                let has = exports[upto].1 .0.iter().any(|e| e.0 == i);
                prop_assert_eq!(target.get(&Uuid::from_u128(i)).unwrap().is_some(), has);
            }
            // Applying goes on after the restored sequence: new ids are stored, known
            // ones are not.
            let before = target.event_count().unwrap();
            let applied = target.applied_seq().unwrap();
            let fresh: std::collections::BTreeSet<u128> = after.iter().copied().collect();
            let new = fresh.iter().filter(|&&i| !exports[upto].1 .0.iter().any(|e| e.0 == i)).count() as u64;
            target.apply(vec![(applied + 1, ShardCommand::Insert { events: after.iter().map(|&i| model_event(i)).collect() })]).unwrap();
            prop_assert_eq!(target.event_count().unwrap(), before + new);
            prop_assert!(target.begin_restore().is_err(), "a shard with data refuses a restore");
        }
    }
}

/// A sealed block whose frames cannot be read, opened because it holds a stored id, is
/// skipped and counted; the rest of the command is stored and the shard goes on.
#[test]
fn an_unreadable_sealed_block_is_skipped_and_the_rest_applied() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap().shard(2).unwrap();
    s.apply(vec![(1, ShardCommand::Insert { events: vec![event(1, 10, "a")] })]).unwrap();
    let mut bad = SealedBlock::seal(&[event(1, 10, "a"), event(2, 20, "a")]).unwrap();
    // Damage the first frame's bytes, keeping the framing intact.
    let at = bad.bytes.len() - 3;
    bad.bytes[at] ^= 0xff;
    bad.bytes[at - 1] ^= 0xff;
    let good = SealedBlock::seal(&[event(3, 30, "b"), event(4, 40, "b")]).unwrap();
    let out = s.apply(vec![(2, ShardCommand::Blocks { blocks: vec![bad, good] })]).unwrap();
    assert_eq!((out.blocks_undecodable, out.blocks_kept, out.stored), (1, 1, 2));
    assert_eq!(s.event_count().unwrap(), 3);
    assert_eq!(s.applied_seq().unwrap(), 2);
    assert_eq!(s.stream_counts().unwrap(), Model::from([("a".into(), 1), ("b".into(), 2)]));
}

/// What a shard answers through every read path: whole blocks, events by id, events by
/// position and lite events.
fn answers(s: &ShardStore, ids: &[u128]) -> Vec<String> {
    let mut out: Vec<String> = all_events(s).iter().map(|e| format!("{e:?}")).collect();
    out.extend(ids.iter().map(|&i| format!("{:?}", s.get(&Uuid::from_u128(i)).unwrap())));
    for meta in s.block_metas(i64::MIN, i64::MAX).unwrap() {
        out.push(format!("{:?}", s.read_block_at(meta.seq, &[0, 2, 3]).unwrap()));
        s.read_block_lite(meta.seq, None, &mut |p, e| out.push(format!("{p} {e:?}"))).unwrap();
    }
    out
}

/// Blocks stored before frames became columnar are read as they were written, beside
/// new ones, and a delete rewrites them in the new form.
#[test]
fn a_store_written_in_the_row_form_answers_the_same() {
    let events = |lo: u128| -> Vec<Event> {
        (lo..lo + 300)
            .map(|i| {
                let mut e = model_event(i);
                e.message = format!("message {i} ü");
                e.fields.insert("n".into(), serde_json::json!(i));
                if i % 3 == 0 {
                    e.fields.insert("n".into(), serde_json::json!({"nested": [i, "x"]}));
                }
                e
            })
            .collect()
    };
    let rows = |events: &[Event]| {
        let bytes = gossamer_schemas::batch::encode_block_rows(events).unwrap();
        SealedBlock { bytes, ..SealedBlock::seal(events).unwrap() }
    };
    let (old_dir, new_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let old = Store::open(old_dir.path()).unwrap().shard(1).unwrap();
    let new = Store::open(new_dir.path()).unwrap().shard(1).unwrap();
    let (a, b) = (events(0), events(1000));
    old.apply(vec![(1, ShardCommand::Blocks { blocks: vec![rows(&a), rows(&b)] })]).unwrap();
    new.apply(vec![(1, ShardCommand::Blocks { blocks: vec![SealedBlock::seal(&a).unwrap(), SealedBlock::seal(&b).unwrap()] })]).unwrap();
    let probe = [0, 3, 299, 1000, 1150, 5000];
    assert_eq!(answers(&old, &probe), answers(&new, &probe));
    assert_eq!(all_events(&old), [a.clone(), b.clone()].concat());

    // A new batch beside the old blocks, then a delete that rewrites an old block.
    for s in [&old, &new] {
        s.apply(vec![(2, sealed(&[(2000..2300).collect()]))]).unwrap();
        s.apply(vec![(3, ShardCommand::Delete { ids: vec![Uuid::from_u128(3), Uuid::from_u128(2001)] })]).unwrap();
    }
    assert_eq!(answers(&old, &probe), answers(&new, &probe));
    assert_eq!(old.event_count().unwrap(), 898);
    assert!(old.get(&Uuid::from_u128(3)).unwrap().is_none());
    assert_eq!(old.get(&Uuid::from_u128(4)).unwrap().unwrap(), a[4]);
}

/// A replica filled from a copy past the log's start says how far it is covered: the
/// mark outlives a reopen, travels in a full copy, never goes back, is passed by the
/// sequences applied later, and a wipe drops it with the rest.
#[test]
fn the_sequence_a_copy_covers_is_kept_until_the_shard_is_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap().shard(1).unwrap();
    s.apply(vec![(4, ShardCommand::Insert { events: vec![event(1, 10, "a")] })]).unwrap();
    assert_eq!(s.covered_seq().unwrap(), 4);
    s.set_covered(9).unwrap();
    s.set_covered(7).unwrap();
    assert_eq!((s.applied_seq().unwrap(), s.covered_seq().unwrap()), (4, 9));
    drop(s);
    let store = reopen_store(dir.path());
    let s = store.shard(1).unwrap();
    assert_eq!(s.covered_seq().unwrap(), 9);

    let copy_dir = tempfile::tempdir().unwrap();
    let copy = Store::open(copy_dir.path()).unwrap().shard(1).unwrap();
    let mut r = copy.begin_restore().unwrap();
    s.export(None, &mut |rec| {
        r.record(rec).map_err(std::io::Error::other)?;
        Ok(())
    })
    .unwrap();
    r.finish().unwrap();
    assert_eq!((copy.applied_seq().unwrap(), copy.covered_seq().unwrap()), (4, 9));

    s.apply(vec![(12, ShardCommand::Insert { events: vec![event(2, 20, "a")] })]).unwrap();
    assert_eq!(s.covered_seq().unwrap(), 12);
    s.wipe().unwrap();
    assert_eq!(s.covered_seq().unwrap(), 0);
}

/// Blocks an earlier version wrote in rows are rewritten in today's layout a few at a
/// time: the same events in the same order come back, nothing is left to upgrade, a
/// second pass rewrites nothing, and blocks added later are checked from where the
/// last pass ended.
#[test]
fn blocks_in_rows_are_upgraded_in_steps_and_read_the_same() {
    let rows = |events: &[Event]| {
        let bytes = gossamer_schemas::batch::encode_block_rows(events).unwrap();
        SealedBlock { bytes, ..SealedBlock::seal(events).unwrap() }
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap().shard(2).unwrap();
    let batches: Vec<Vec<Event>> = (0..7u128).map(|b| (b * 100..b * 100 + 90).map(model_event).collect()).collect();
    for (i, b) in batches.iter().enumerate() {
        let block = if i == 3 { SealedBlock::seal(b).unwrap() } else { rows(b) };
        s.apply(vec![(i as u64 + 1, ShardCommand::Blocks { blocks: vec![block] })]).unwrap();
    }
    let before = all_events(&s);
    let probe = [0, 5, 305, 650, 9999];
    let answered = answers(&s, &probe);
    assert_eq!(s.blocks_to_upgrade().unwrap(), 6);

    let (mut from, mut rewritten, mut steps) = (s.upgraded_to().unwrap() + 1, 0, 0);
    loop {
        let (n, next) = s.upgrade_blocks(from, 2).unwrap();
        rewritten += n;
        steps += 1;
        match next {
            Some(id) => from = id,
            None => break,
        }
    }
    assert_eq!((rewritten, steps), (6, 4));
    assert_eq!(s.blocks_to_upgrade().unwrap(), 0);
    assert_eq!(all_events(&s), before);
    assert_eq!(answers(&s, &probe), answered);
    for kv in s.tree.scan_prefix([BLOCK]) {
        assert!(gossamer_schemas::batch::block_is_current(&kv.unwrap().1).unwrap());
    }
    assert_eq!(s.upgrade_blocks(s.upgraded_to().unwrap() + 1, 2).unwrap(), (0, None));

    // A block in rows that comes later is found past the mark.
    s.apply(vec![(8, ShardCommand::Blocks { blocks: vec![rows(&(900..950).map(model_event).collect::<Vec<_>>())] })]).unwrap();
    assert_eq!(s.blocks_to_upgrade().unwrap(), 1);
    assert_eq!(s.upgrade_blocks(s.upgraded_to().unwrap() + 1, 64).unwrap(), (1, None));
    assert_eq!(s.blocks_to_upgrade().unwrap(), 0);
}
