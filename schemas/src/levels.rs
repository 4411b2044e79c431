//! The level a plain-text log line says it has, as Loki's detected level does: the
//! common shapes of the head of a line (`INFO`, `[error]`, `<E>`, `ERROR:`, `level=warn`,
//! Android's lone `W` before its tag, Windows' `Info`), normalised like any level.
//!
//! Only the head of the line is read (its first [`HEAD_TOKENS`] words), and a lowercase
//! word counts only in brackets, angle brackets or `level=`: a message that merely
//! mentions an error does not make one.

use crate::event::normalize_level;

/// Words of the head read for a level.
pub const HEAD_TOKENS: usize = 12;

/// Level words as logs write them bare (upper case, or capitalised).
const WORDS: [&str; 15] = [
    "TRACE", "DEBUG", "INFO", "NOTICE", "WARN", "WARNING", "ERROR", "ERR", "SEVERE", "FATAL", "CRITICAL", "CRIT", "ALERT", "EMERG",
    "PANIC",
];

/// Level words as some logs write them capitalised (Windows' `Info`); not `Alert` or
/// `Notice`, which a message may well start with.
const CAPITALISED: [&str; 7] = ["Trace", "Debug", "Info", "Warn", "Warning", "Error", "Fatal"];

/// Keys of `key=value` pairs that name the level.
const KEYS: [&str; 4] = ["level", "lvl", "severity", "loglevel"];

/// The normalised level `line` says it has, if it says one.
pub fn detect_level(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().take(HEAD_TOKENS).collect();
    for (i, word) in words.iter().enumerate() {
        if let Some(level) = level_of(word, words.get(i + 1).copied()) {
            return Some(normalize_level(level));
        }
    }
    // `level=warn` anywhere in the line (logfmt puts it where it likes).
    line.split_whitespace().find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        let v = v.trim_matches(['"', '\'', ',']);
        (KEYS.contains(&k.to_ascii_lowercase().as_str()) && !v.is_empty()).then(|| normalize_level(v))
    })
}

/// The level one word of the head says, given the word after it.
fn level_of<'a>(word: &'a str, next: Option<&str>) -> Option<&'a str> {
    // `[error]`, `<warn>`, `[ERROR]`, `<E>`: any case, a letter or a word.
    for (open, close) in [('[', ']'), ('<', '>'), ('(', ')')] {
        if let Some(inner) = word.strip_prefix(open).and_then(|w| w.strip_suffix(close).or_else(|| w.strip_suffix(&format!("{close}:")))) {
            let upper = inner.to_ascii_uppercase();
            if WORDS.contains(&upper.as_str()) || (inner.len() == 1 && "VDIWEF".contains(upper.as_str())) {
                return Some(inner);
            }
            return None;
        }
    }
    // `ERROR`, `ERROR:`, `INFO,`, `Info`, `Warning:`.
    // Capitalised, only the words a sentence would not start with by chance.
    let bare = word.trim_end_matches([':', ',', ';']);
    if bare.chars().all(|c| c.is_ascii_uppercase()) && WORDS.contains(&bare) {
        return Some(bare);
    }
    if CAPITALISED.contains(&bare) {
        return Some(bare);
    }
    // Android's `D WindowManager: ...`: a lone level letter before a tag ending in ':'.
    if bare.len() == 1 && word.len() == 1 && "VDIWEF".contains(bare) && next.is_some_and(|n| n.ends_with(':')) {
        return Some(bare);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::detect_level;

    #[test]
    fn the_common_shapes_of_a_line_s_head() {
        let cases = [
            ("[Sun Dec 04 04:47:44 2005] [notice] workerEnv.init() ok", Some("info")),
            ("[Sun Dec 04 04:47:45 2005] [error] mod_jk child workerEnv in error state 6", Some("error")),
            ("081109 203615 148 INFO dfs.DataNode$PacketResponder: done", Some("info")),
            ("2015-10-18 18:01:47,978 WARN [main] org.apache.hadoop: slow", Some("warn")),
            ("2015-07-29 17:41:44,747 - ERROR [QuorumPeer] - lost", Some("error")),
            ("03-17 16:13:38.811  1702  2395 D WindowManager: printFreezing", Some("debug")),
            ("03-17 16:13:38.935  1702  3697 W ActivityManager: getRunning", Some("warn")),
            ("2016-09-28 04:30:31, Info                  CBS    SQM: Warning: Failed", Some("info")),
            ("- 1117869872 2005.06.04 R04-M1-N4-I:J18-U11 2005-06-04-00.24.32.432192 R04 RAS APP FATAL ciod: failed", Some("fatal")),
            ("ERROR: could not open file", Some("error")),
            ("<E> disk full", Some("error")),
            ("ts=2026-12-01T10:00:00Z level=warn msg=\"slow request\"", Some("warn")),
            ("time=1 msg=\"x\" severity=ERROR", Some("error")),
            ("[WARNING] deprecated option", Some("warn")),
            ("Connection reset by peer: an error occurred", None),
            ("I think this is fine", None),
            ("Alert sent to the on-call engineer", None),
            ("user error in the request", None),
            ("", None),
        ];
        for (line, want) in cases {
            assert_eq!(detect_level(line).as_deref(), want, "{line:?}");
        }
    }
}
