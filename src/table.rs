//! The client commands' tables: every column as wide as its widest cell (header included), so
//! that a long repository, pipeline, stage or runner name never pushes the columns out of line.

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    /// Numbers and ids.
    Right,
}

pub struct Table {
    headers: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

/// Between two columns.
const GAP: &str = "  ";

impl Table {
    pub fn new(headers: &[(&'static str, Align)]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra ones are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .map(Into::into)
            .take(self.headers.len())
            .collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// The table as text, one `\n`-terminated line per row, without trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|(h, _)| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        let headers = self.headers.iter().map(|(h, _)| h.to_string()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, (&w, (_, align)))) in
                row.iter().zip(widths.iter().zip(&self.headers)).enumerate()
            {
                if i > 0 {
                    line.push_str(GAP);
                }
                let pad = " ".repeat(w - width(cell));
                match align {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) -> std::io::Result<()> {
        crate::text::print_out(&self.render())
    }
}

/// Characters, not bytes: names may hold non-ASCII letters.
fn width(text: &str) -> usize {
    text.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell() {
        let mut t = Table::new(&[
            ("RUN", Align::Right),
            ("REPO", Align::Left),
            ("STATUS", Align::Left),
        ]);
        t.row(["7", "a-repository-with-a-long-name", "success"]);
        t.row(["1234", "é", ""]);
        assert_eq!(
            t.render(),
            " RUN  REPO                           STATUS\n   \
             7  a-repository-with-a-long-name  success\n\
             1234  é\n"
        );
    }

    #[test]
    fn a_table_without_rows_is_its_header() {
        let t = Table::new(&[("NAME", Align::Left), ("ROLE", Align::Left)]);
        assert_eq!(t.render(), "NAME  ROLE\n");
    }

    #[test]
    fn short_rows_are_padded_and_long_ones_cut() {
        let mut t = Table::new(&[("A", Align::Left), ("B", Align::Left)]);
        t.row(["x"]);
        t.row(["y", "z", "dropped"]);
        assert_eq!(t.render(), "A  B\nx\ny  z\n");
    }
}
