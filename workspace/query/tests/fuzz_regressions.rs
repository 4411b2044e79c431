//! Replays the query fuzz seeds and every query a fuzz run ever failed on
//! (`schemas/fuzz/regressions/query`) through the property the fuzz target checks.

#[test]
fn saved_queries_parse_and_print_back_or_fail_with_a_column() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/fuzz");
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        for entry in std::fs::read_dir(root.join(dir).join("query")).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            assert!(std::panic::catch_unwind(|| gossamer_query::fuzzing::check_query(&data)).is_ok(), "{} fails again", path.display());
            n += 1;
        }
    }
    assert!(n >= 2, "the seeds and the regression are there");
}
