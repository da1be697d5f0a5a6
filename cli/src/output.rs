//! Output in the format a person or a script asked for: aligned tables (`table`,
//! `wide`), stable JSON and YAML (the same field names in every release), CSV.

use std::io::Write;

use anyhow::Context as _;
use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The table with more columns.
    Wide,
    /// A JSON array (or object) with stable field names, for scripts.
    Json,
    /// The same as YAML.
    Yaml,
    /// Comma-separated values with a header row (the table's columns, wide).
    Csv,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Output {
    pub format: Format,
    pub no_headers: bool,
}

/// The columns of a listing: the first `narrow` are shown by `table`, all by `wide` and `csv`.
pub struct Columns {
    pub headers: &'static [&'static str],
    pub narrow: usize,
}

impl Output {
    /// Prints `items` as a list.
    pub fn list<T: Serialize>(
        &self,
        items: &[T],
        columns: &Columns,
        row: impl Fn(&T) -> Vec<String>,
    ) -> anyhow::Result<()> {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        match self.format {
            Format::Json => {
                serde_json::to_writer_pretty(&mut out, items)?;
                writeln!(out)?;
            }
            Format::Yaml => write!(out, "{}", serde_yaml::to_string(items)?)?,
            Format::Csv => {
                let mut w = csv::WriterBuilder::new().from_writer(out);
                if !self.no_headers {
                    w.write_record(columns.headers)?;
                }
                for item in items {
                    w.write_record(row(item))?;
                }
                w.flush()?;
            }
            Format::Table | Format::Wide => {
                let n = if self.format == Format::Wide {
                    columns.headers.len()
                } else {
                    columns.narrow
                };
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .map(|i| row(i).into_iter().take(n).collect())
                    .collect();
                let headers: Vec<String> = columns
                    .headers
                    .iter()
                    .take(n)
                    .map(|h| h.to_string())
                    .collect();
                write_table(
                    &mut out,
                    if self.no_headers {
                        None
                    } else {
                        Some(&headers)
                    },
                    &rows,
                )?;
            }
        }
        Ok(())
    }

    /// Prints one object: JSON/YAML as such, otherwise `human` writes it.
    pub fn object<T: Serialize>(
        &self,
        item: &T,
        human: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> anyhow::Result<()> {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        match self.format {
            Format::Json => {
                serde_json::to_writer_pretty(&mut out, item)?;
                writeln!(out)?;
            }
            Format::Yaml => write!(out, "{}", serde_yaml::to_string(item)?)?,
            Format::Table | Format::Wide | Format::Csv => {
                human(&mut out).context("cannot write the output")?
            }
        }
        Ok(())
    }

    /// Whether the output is for people (so progress and notes may be shown).
    pub fn is_human(&self) -> bool {
        matches!(self.format, Format::Table | Format::Wide)
    }
}

/// Left-aligned columns separated by three spaces, like kubectl.
pub fn write_table(
    out: &mut dyn Write,
    headers: Option<&[String]>,
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let columns = headers
        .map(|h| h.len())
        .or_else(|| rows.first().map(Vec::len))
        .unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for r in headers.into_iter().chain(rows.iter().map(Vec::as_slice)) {
        for (i, cell) in r.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for r in headers.into_iter().chain(rows.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate().take(columns) {
            if i + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_hide_headers() {
        let mut buf = Vec::new();
        let headers = vec!["NAME".to_string(), "DOMAIN".to_string()];
        let rows = vec![
            vec!["alice".into(), "example.com".into()],
            vec!["bo".into(), "x".into()],
        ];
        write_table(&mut buf, Some(&headers), &rows).unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "NAME    DOMAIN\nalice   example.com\nbo      x\n"
        );
        let mut buf = Vec::new();
        write_table(&mut buf, None, &rows).unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "alice   example.com\nbo      x\n"
        );
    }
}
