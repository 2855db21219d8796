//! Parsing the text of an expected reachability matrix:
//!
//! ```text
//!        ns1   ns2
//! ns1    ok    drop
//! ns2    drop  ok
//! ```
//!
//! Pure text work: labels are returned as written and checked against the scenario's
//! namespaces by the validator. Errors carry the byte range of the offending word
//! inside the matrix text.

use std::ops::Range;

use crate::probe::outcome::CellKind;

#[derive(Debug, Clone, PartialEq)]
pub struct MatrixText {
    /// Column labels with their byte ranges.
    pub columns: Vec<(String, Range<usize>)>,
    pub rows: Vec<MatrixRow>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MatrixRow {
    pub label: (String, Range<usize>),
    pub cells: Vec<(Option<CellKind>, Range<usize>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MatrixError {
    pub range: Range<usize>,
    pub message: String,
    pub help: String,
}

fn words(line: &str, line_start: usize) -> Vec<(String, Range<usize>)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                out.push((line[s..i].to_string(), line_start + s..line_start + i));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push((
            line[s..].to_string(),
            line_start + s..line_start + line.len(),
        ));
    }
    out
}

pub fn parse(text: &str) -> Result<MatrixText, MatrixError> {
    let mut lines = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let w = words(body, offset);
        if !w.is_empty() {
            lines.push(w);
        }
        offset += line.len();
    }
    let mut it = lines.into_iter();
    let Some(columns) = it.next() else {
        return Err(MatrixError {
            range: 0..text.len(),
            message: "the matrix is empty".into(),
            help: "write a header line of destinations, then one line per source, e.g.\n       ns1  ns2\nns1    ok   drop\nns2    drop ok".into(),
        });
    };
    for (i, (label, range)) in columns.iter().enumerate() {
        if columns[..i].iter().any(|(l, _)| l == label) {
            return Err(MatrixError {
                range: range.clone(),
                message: format!("destination `{label}` appears twice in the header"),
                help: "each destination is one column".into(),
            });
        }
    }
    let mut rows: Vec<MatrixRow> = Vec::new();
    for mut words in it {
        let label = words.remove(0);
        if rows.iter().any(|r| r.label.0 == label.0) {
            return Err(MatrixError {
                range: label.1,
                message: format!("source `{}` has two rows", label.0),
                help: "each source is one row".into(),
            });
        }
        if words.len() != columns.len() {
            let range = if words.len() > columns.len() {
                words[columns.len()].1.clone()
            } else {
                label.1.clone()
            };
            return Err(MatrixError {
                range,
                message: format!(
                    "row `{}` has {} cells but the header has {} destinations",
                    label.0,
                    words.len(),
                    columns.len()
                ),
                help: "write one cell per destination: ok, drop, reject, unreachable or - (not checked)".into(),
            });
        }
        let mut cells = Vec::new();
        for (word, range) in words {
            let cell =
                if word == "-" {
                    None
                } else {
                    match CellKind::parse(&word) {
                        Some(c) => Some(c),
                        None => return Err(MatrixError {
                            range,
                            message: format!("`{word}` is not a reachability outcome"),
                            help:
                                "a cell is one of: ok, drop, reject, unreachable, - (not checked)"
                                    .into(),
                        }),
                    }
                };
            cells.push((cell, range));
        }
        rows.push(MatrixRow { label, cells });
    }
    if rows.is_empty() {
        return Err(MatrixError {
            range: 0..text.len(),
            message: "the matrix has a header but no rows".into(),
            help: "add one line per source: its name, then one cell per destination".into(),
        });
    }
    Ok(MatrixText { columns, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_issue_example() {
        let text = "       ns1   ns2\nns1    ok    drop\nns2    drop  ok\n";
        let m = parse(text).unwrap();
        assert_eq!(
            m.columns.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
            ["ns1", "ns2"]
        );
        assert_eq!(m.rows.len(), 2);
        assert_eq!(
            m.rows[0].cells.iter().map(|c| c.0).collect::<Vec<_>>(),
            [Some(CellKind::Ok), Some(CellKind::Drop)]
        );
        assert_eq!(&text[m.rows[1].cells[0].1.clone()], "drop");
    }

    #[test]
    fn dash_means_not_checked() {
        let m = parse("a b\nx - reject\n").unwrap();
        assert_eq!(m.rows[0].cells[0].0, None);
        assert_eq!(m.rows[0].cells[1].0, Some(CellKind::Reject));
    }

    #[test]
    fn unknown_cell_points_at_the_word() {
        let text = "    ns1  ns2\nns1 ok   dorp\n";
        let err = parse(text).unwrap_err();
        assert_eq!(&text[err.range.clone()], "dorp");
        assert!(err.message.contains("dorp"));
    }

    #[test]
    fn short_row_is_an_error() {
        let err = parse("ns1 ns2\nns1 ok\n").unwrap_err();
        assert!(err.message.contains("1 cells but the header has 2"));
    }

    #[test]
    fn duplicate_rows_and_columns_are_errors() {
        assert!(parse("a a\nx ok ok\n").is_err());
        assert!(parse("a\nx ok\nx ok\n").is_err());
    }

    #[test]
    fn empty_matrix_is_an_error() {
        assert!(parse("  \n").is_err());
        assert!(parse("a b\n").is_err());
    }
}
