//! The properties the fuzz targets (`schemas/fuzz`) check, here so the regression
//! tests replay the saved inputs through exactly the same code. Each panics when the
//! property fails.

use crate::batch::{decode_events, decode_events_at, for_each_lite};
use crate::decode::{decode_payload, IdSeed, Limits};
use crate::ShardCommand;

/// Any payload on `logs.<stream>` (the first byte picks the content type) decodes to
/// events within the limits, or to an error.
pub fn check_payload(data: &[u8]) {
    let Some((&kind, payload)) = data.split_first() else { return };
    let content_type = match kind % 4 {
        0 => None,
        1 => Some("application/json"),
        2 => Some("application/msgpack"),
        _ => Some("text/plain"),
    };
    let limits = Limits::default();
    let seed = IdSeed { received_ns: 1_780_000_000_000_000_000, seq: 7 };
    if let Ok(events) = decode_payload("fuzz.app", payload, content_type, seed, &limits) {
        assert!(events.len() <= limits.max_batch_events);
        for e in &events {
            assert!(e.labels.len() <= limits.max_labels);
            assert!(e.message.len() <= limits.max_message_bytes);
        }
    }
}

/// Any bytes decode to a shard-log command or an error; a command that decodes
/// encodes and decodes to itself.
pub fn check_shard_command(data: &[u8]) {
    if let Ok(cmd) = ShardCommand::decode(data) {
        let again = ShardCommand::decode(&cmd.encode().expect("a decoded command encodes")).expect("and decodes");
        assert_eq!(format!("{again:?}"), format!("{cmd:?}"));
    }
}

/// A stored frame decodes whole, by position and as lite events consistently, or
/// fails.
pub fn check_event_frame(data: &[u8]) {
    let all = decode_events(data);
    let picked = decode_events_at(data, &[0, 1, 5]);
    let mut lite = 0usize;
    let lite_ok = for_each_lite(data, None, &mut |_, _| lite += 1).is_ok();
    if let (Ok(all), Ok(picked)) = (&all, &picked) {
        assert!(picked.len() <= all.len());
        for (pos, e) in picked {
            assert_eq!(all.get(*pos as usize).map(|x| x.id), Some(e.id));
        }
        if lite_ok {
            assert_eq!(lite, all.len());
        }
    }
}
