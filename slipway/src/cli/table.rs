//! Plain-text rendering for people: aligned columns with an upper-case
//! header (as `kubectl get` prints them) and `Key:  value` blocks for one
//! object. Pure string building; `views` decides what goes in.

/// Columns are separated by three spaces; the last one is not padded.
const GAP: &str = "   ";

#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table { headers: headers.iter().map(|h| h.to_uppercase()).collect(), rows: vec![] }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) -> &mut Table {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells.into_iter().map(|c| one_line(&c)).collect());
        self
    }

    /// The header line and one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, (cell, width)) in line.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str(GAP);
                }
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `Key:   value` lines, values aligned; a value with several lines is
/// indented under its key.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.chars().count() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let label = format!("{key}:");
        if value.contains('\n') {
            out.push_str(&label);
            out.push('\n');
            for line in value.lines() {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        } else {
            let pad = width - label.chars().count();
            let line = format!("{label}{}{GAP}{value}", " ".repeat(pad));
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

/// Table cells are one line: newlines and tabs become spaces.
fn one_line(cell: &str) -> String {
    cell.replace(['\n', '\r', '\t'], " ")
}

/// Shortens `text` to `max` characters, ending in `...` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max.saturating_sub(3)).collect();
    format!("{kept}...")
}

#[cfg(test)]
mod tests {
    use expect_test::{expect, Expect};

    use super::*;

    fn check(table: &Table, expected: Expect) {
        expected.assert_eq(&table.render());
    }

    #[test]
    fn an_empty_table_is_its_header() {
        check(
            &Table::new(&["id", "state"]),
            expect![[r#"
            ID   STATE
        "#]],
        );
    }

    #[test]
    fn columns_align_to_the_widest_cell_and_lines_are_trimmed() {
        let mut t = Table::new(&["id", "state", "rack"]);
        t.row(vec!["a".into(), "discovering".into(), "r7".into()]);
        t.row(vec!["0192-long-id".into(), "ready".into()]);
        t.row(vec!["b".into(), "failed\nphase".into(), "".into(), "dropped".into()]);
        check(
            &t,
            expect![[r#"
            ID             STATE          RACK
            a              discovering    r7
            0192-long-id   ready
            b              failed phase
        "#]],
        );
    }

    #[test]
    fn key_values_align_and_indent_blocks() {
        let text = key_values(&[
            ("ID", "m1".into()),
            ("State", "ready".into()),
            ("Disks", "vda  8.0 GiB\nvdb  1.0 GiB".into()),
            ("Rack", "".into()),
        ]);
        expect![[r#"
            ID:      m1
            State:   ready
            Disks:
              vda  8.0 GiB
              vdb  1.0 GiB
            Rack:
        "#]]
        .assert_eq(&text);
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a long detail text", 10), "a long ...");
    }
}
