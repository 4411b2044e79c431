//! Wire types and codecs of Gossamer: events, shard-log commands, query requests and
//! answers, subject names. No actix, no NATS: everything here is plain data plus the
//! functions that turn bytes into it and back.

pub mod api;
pub mod batch;
pub mod columns;
pub mod decode;
pub mod event;
pub mod fuzzing;
pub mod levels;
pub mod placement;
pub mod shippers;
pub mod subjects;
pub mod text;
pub mod time;

pub use batch::ShardCommand;
pub use decode::{decode_payload, DecodeError, IdSeed};
pub use event::{normalize_level, shard_for, Event};
