//! Replays the fuzz seeds and every input a fuzz run ever failed on (`fuzz/regressions`)
//! through the properties the fuzz targets check.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|f| f.to_string_lossy().starts_with('.')) {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails again", path.display());
            n += 1;
        }
    }
    assert!(n > 0, "no inputs for {target}");
}

#[test]
fn payload_inputs_decode_or_fail_cleanly() {
    replay("payload", gossamer_schemas::fuzzing::check_payload);
}

#[test]
fn shard_command_inputs_round_trip_or_fail_cleanly() {
    replay("shard_command", gossamer_schemas::fuzzing::check_shard_command);
}

#[test]
fn event_frame_inputs_agree_or_fail_cleanly() {
    replay("event_frames", gossamer_schemas::fuzzing::check_event_frame);
}
