//! Commands in a shard's log (the `SHARDS` stream). Every replica applies the same
//! commands in the same order. On the wire: MessagePack, compressed with zstd.

use serde::{Deserialize, Serialize};

use crate::event::Event;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShardCommand {
    /// Store these events; ids already stored are skipped.
    Insert { events: Vec<Event> },
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("compression: {0}")]
    Compression(#[from] std::io::Error),
    #[error("encoding: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decoding: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// zstd level for shard-log messages: fast, and most of the gain.
const LEVEL: i32 = 1;

impl ShardCommand {
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let raw = rmp_serde::to_vec(self)?;
        Ok(zstd::bulk::compress(&raw, LEVEL)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let raw = zstd::stream::decode_all(bytes)?;
        Ok(rmp_serde::from_slice(&raw)?)
    }
}

/// A list of events as stored in one block: MessagePack, zstd-compressed.
pub fn encode_events(events: &[Event], level: i32) -> Result<Vec<u8>, CodecError> {
    let raw = rmp_serde::to_vec(events)?;
    Ok(zstd::bulk::compress(&raw, level)?)
}

pub fn decode_events(bytes: &[u8]) -> Result<Vec<Event>, CodecError> {
    let raw = zstd::stream::decode_all(bytes)?;
    Ok(rmp_serde::from_slice(&raw)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn event(message: String, ts: i64, label: String) -> Event {
        let mut labels = BTreeMap::new();
        labels.insert("k".to_string(), label);
        let mut fields = serde_json::Map::new();
        fields.insert("n".into(), serde_json::json!(ts % 1000));
        Event {
            id: uuid::Uuid::now_v7(),
            ts,
            stream: "s.t".into(),
            level: "info".into(),
            message,
            labels,
            fields,
        }
    }

    proptest! {
        #[test]
        fn commands_round_trip(msgs in proptest::collection::vec((".*", any::<i64>(), "[a-z]{0,8}"), 0..20)) {
            let events: Vec<Event> = msgs.into_iter().map(|(m, t, l)| event(m, t, l)).collect();
            let cmd = ShardCommand::Insert { events };
            let back = ShardCommand::decode(&cmd.encode().unwrap()).unwrap();
            prop_assert_eq!(back, cmd);
        }

        #[test]
        fn decoding_garbage_fails_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = ShardCommand::decode(&bytes);
        }
    }
}
