//! A small CSV reader/writer for DL_info.csv: comma separated, fields optionally double-quoted
//! (DeepLesion quotes its comma lists: "x1, y1, ..."), `""` inside quotes is a literal quote.
//!
//! Why not the `csv` crate: it lets a quoted field run across lines (RFC 4180), so one stray quote
//! in a hand-edited DL_info.csv would swallow every row after it into one field, and those lesions
//! would vanish as a single bad row. DeepLesion never puts a newline in a field, so the reader
//! splits lines first and a bad quote costs only its own row, named (tests/data_reader.rs). The
//! other things the crate handles are handled here too: a BOM on the header, CRLF line ends.

/// Splits one CSV line into fields. An unterminated quote is an error describing where it opened.
pub fn split_record(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut in_quotes = false;
    let mut quote_opened_at = 0;
    let mut pos = 0usize;
    while let Some(c) = chars.next() {
        pos += 1;
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    pos += 1;
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
        } else {
            match c {
                ',' => fields.push(std::mem::take(&mut field)),
                '"' => {
                    in_quotes = true;
                    quote_opened_at = pos;
                }
                '\r' => {}
                _ => field.push(c),
            }
        }
    }
    if in_quotes {
        return Err(format!("unterminated quote opened at character {quote_opened_at}"));
    }
    fields.push(field);
    Ok(fields)
}

/// Quotes a field when it holds a comma or a quote, as DeepLesion does for its lists.
pub fn quote(field: &str) -> String {
    if field.contains(',') || field.contains('"') {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quoted_lists_and_escaped_quotes() {
        let f = split_record(r#"a.png,16,"1.5, 2, 3",x,"say ""hi""",,end"#).unwrap();
        assert_eq!(f, vec!["a.png", "16", "1.5, 2, 3", "x", "say \"hi\"", "", "end"]);
        let e = split_record(r#"a,"1, 2"#).unwrap_err();
        assert!(e.contains("character 3"), "{e}");
        for s in ["plain", "1, 2", "q\"uote"] {
            assert_eq!(split_record(&quote(s)).unwrap(), vec![s.to_string()]);
        }
    }
}
