//! The layers a configuration is built from, as figment providers that
//! remember where each value came from: compiled-in TOML, files (with the
//! line of every key), and single environment variables.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use figment::value::{Dict, Map};
use figment::{Metadata, Profile, Provider};
use toml_edit::TableLike;

use super::problem::ConfigProblem;

/// Where a layer's values came from.
#[derive(Clone, Debug)]
pub(super) enum Origin {
    /// Compiled into the binary: `built-in defaults`, `built-in profile dev`.
    BuiltIn(String),
    /// A TOML file; `lines` maps dotted keys to their 1-based line.
    File {
        path: PathBuf,
        lines: HashMap<String, usize>,
    },
    /// One environment variable, by name.
    Env(String),
}

impl Origin {
    /// Where `key` was set, for messages: `config/local.toml:3`,
    /// `env DS_SERVER__PORT`, `built-in profile prod`.
    pub(super) fn describe(&self, key: &str) -> String {
        match self {
            Origin::BuiltIn(label) => label.clone(),
            Origin::File { path, lines } => match lines.get(key) {
                Some(line) => format!("{}:{line}", path.display()),
                None => path.display().to_string(),
            },
            Origin::Env(name) => format!("env {name}"),
        }
    }
}

/// One source of values.
#[derive(Clone, Debug)]
pub(super) struct Layer {
    pub(super) origin: Origin,
    pub(super) dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        match &self.origin {
            Origin::BuiltIn(label) => Metadata::named(label.clone()),
            Origin::File { path, .. } => Metadata::from("TOML file", path.as_path()),
            Origin::Env(name) => Metadata::from("environment variable", name.clone()),
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// Parses TOML text into a layer; `path` names it in messages.
pub(super) fn parse_toml(path: &Path, text: &str) -> Result<(Dict, Origin), ConfigProblem> {
    let document = toml_edit::ImDocument::parse(text).map_err(|error| {
        let (line, column) = error
            .span()
            .map_or((1, 1), |span| line_column(text, span.start));
        ConfigProblem::new(
            format!(
                "TOML syntax error at line {line}, column {column}: {}",
                error.message().trim().replace('\n', "; ")
            ),
            format!(
                "fix line {line} of {}: values are `key = value`, strings are quoted, tables are \
                 `[section]`",
                path.display()
            ),
        )
        .with_source(format!("{}:{line}:{column}", path.display()))
    })?;
    let mut lines = HashMap::new();
    collect_lines(document.as_table(), "", text, &mut lines);
    let dict = toml::from_str::<Dict>(text).map_err(|error| {
        ConfigProblem::new(
            format!("cannot read the TOML: {}", error.message()),
            "use plain TOML tables, strings, numbers, booleans and arrays",
        )
        .with_source(path.display().to_string())
    })?;
    let origin = Origin::File {
        path: path.to_path_buf(),
        lines,
    };
    Ok((dict, origin))
}

/// Records the line of every key, tables included, under its dotted path.
fn collect_lines(
    table: &dyn TableLike,
    prefix: &str,
    text: &str,
    out: &mut HashMap<String, usize>,
) {
    for (name, item) in table.iter() {
        let path = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        };
        let span = table
            .get_key_value(name)
            .and_then(|(key, _)| key.span())
            .or_else(|| item.span());
        if let Some(span) = span {
            out.insert(path.clone(), line_column(text, span.start).0);
        }
        if let Some(inner) = item.as_table_like() {
            collect_lines(inner, &path, text, out);
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_keys_tables_and_inline_tables() {
        let text = "# comment\n[server]\nbind_address = \"x\"\n\n[transport.tls]\ncert_path = \"c\"\n\
                    [proxy]\nidentity = { mode = \"header\" }\n";
        let (_, origin) = parse_toml(Path::new("f.toml"), text).expect("valid TOML");
        assert_eq!(origin.describe("server"), "f.toml:2");
        assert_eq!(origin.describe("server.bind_address"), "f.toml:3");
        assert_eq!(origin.describe("transport.tls.cert_path"), "f.toml:6");
        assert_eq!(origin.describe("proxy.identity.mode"), "f.toml:8");
        assert_eq!(origin.describe("nope"), "f.toml");
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let problem = parse_toml(Path::new("f.toml"), "[server]\nbind_address = \n")
            .expect_err("invalid TOML");
        assert_eq!(problem.source.as_deref(), Some("f.toml:2:16"));
        assert!(problem.message.contains("line 2"), "{problem}");
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
