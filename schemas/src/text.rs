//! The §9 tokenizer: tokens are maximal runs of Unicode letters, digits and `_`,
//! compared case-insensitively (so they are returned lowercased).

/// True for the characters that make up a token.
pub fn is_token_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The lowercased tokens of `text`, in order.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    each_token(text, |t| {
        let mut s = String::with_capacity(t.len());
        lower_token(t, &mut s);
        if !s.is_empty() {
            out.push(s);
        }
    });
    out
}

/// Appends `token` lowercased to `out`, keeping only token characters: a few letters
/// lowercase to a letter and a combining mark (`İ` to `i` + U+0307), and a token must
/// stay a token, or a query printed back to text would read as something else.
pub fn lower_token(token: &str, out: &mut String) {
    if token.is_ascii() {
        out.extend(token.chars().map(|c| c.to_ascii_lowercase()));
        return;
    }
    for c in token.chars() {
        out.extend(c.to_lowercase().filter(|l| is_token_char(*l)));
    }
}

/// Calls `f` with every token of `text` as it appears (not lowercased).
pub fn each_token(text: &str, mut f: impl FnMut(&str)) {
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (is_token_char(c), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                f(&text[s..i]);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        f(&text[s..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_anything_but_letters_digits_and_underscore() {
        assert_eq!(
            tokens("Connection reset by peer: blk_-123 (Größe=5)"),
            vec!["connection", "reset", "by", "peer", "blk_", "123", "größe", "5"]
        );
        assert!(tokens("  ..!! ").is_empty());
        // Found by fuzzing the query parser: lowercasing must not leave a mark that
        // splits the token when it is read again.
        assert_eq!(tokens("İstanbul"), vec!["istanbul"]);
        assert_eq!(tokens(&tokens("İstanbul")[0]), vec!["istanbul"]);
    }
}
