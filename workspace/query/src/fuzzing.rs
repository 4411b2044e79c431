//! The property the query fuzz target (`schemas/fuzz`) checks, here so the regression
//! tests replay saved inputs through the same code: any text parses or gives an error
//! with a column inside the text, and what parses prints to text that parses to the
//! same query. Panics when that fails.

pub fn check_query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match crate::parse(text) {
        Ok(expr) => {
            let printed = expr.to_string();
            let again = crate::parse(&printed).unwrap_or_else(|e| panic!("{printed:?} does not parse: {e}"));
            assert_eq!(again.to_string(), printed);
        }
        Err(e) => assert!(e.column <= text.chars().count() + 1, "column {} past the end of {text:?}", e.column),
    }
}
