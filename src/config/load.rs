//! Layering: reads every source in order, drops and reports each unknown key
//! and bad value (so one run reports all of them), and merges the rest with
//! figment, which remembers the layer behind every value.

use std::path::{Path, PathBuf};

use figment::value::{Dict, Value};
use figment::{Figment, Source};

use super::Config;
use super::problem::ConfigProblem;
use super::profile::{DeploymentProfile, profile_hint};
use super::render::{is_secret, shown_value};
use super::source::{Layer, Origin, parse_toml};
use super::suggest::suggest;
use super::validate::{self, Validation};

/// Prefix of the environment variables that set keys.
pub const ENV_PREFIX: &str = "DS_";

/// `DS_*` variables that select how to load rather than set a key.
const ENV_NOT_KEYS: [&str; 3] = ["DS_PROFILE", "DS_CONFIG_DIR", "DS_BUILD_COMMIT"];

/// Where the configuration files live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ConfigDir {
    /// No files: built-in defaults and the environment only.
    None,
    /// `config` relative to the working directory, used when it exists.
    #[default]
    Default,
    /// A directory that must exist (`--config-dir` or `DS_CONFIG_DIR`).
    Path(PathBuf),
}

/// How to load the configuration: which profile, which directory of
/// layer files, which extra file.
#[derive(Clone, Debug, Default)]
pub struct ConfigLoadOptions {
    /// Profile name (`--profile`, `DS_PROFILE`); empty means `default`.
    pub profile: String,
    /// Where `default.toml`, `<profile>.toml` and `local.toml` are.
    pub config_dir: ConfigDir,
    /// An extra file applied after `local.toml` (`--config`); it must exist.
    pub config_file: Option<PathBuf>,
}

/// The name of [`ConfigLoadOptions`] before 0.3.0's was adopted.
pub type LoadOptions = ConfigLoadOptions;

/// The outcome of layering: the configuration (with every bad key left at
/// its previous layer's value), the problems found, and where each value
/// came from.
#[derive(Debug)]
pub struct LoadedConfig {
    config: Config,
    profile: DeploymentProfile,
    figment: Figment,
    origins: Vec<Origin>,
    problems: Vec<ConfigProblem>,
}

impl LoadedConfig {
    /// The merged configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The merged configuration, by value.
    pub fn into_config(self) -> Config {
        self.config
    }

    /// The profile in force.
    pub fn profile(&self) -> &DeploymentProfile {
        &self.profile
    }

    /// Unknown keys, bad values and unreadable sources, in the order found.
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }

    /// Checks the rules that span several keys.
    pub fn validate(&self) -> Validation {
        validate::validate(self)
    }

    /// Checks the rules too, and merges what loading and checking found:
    /// `Err` lists every problem when a layer could not be read or parsed
    /// (the rules' problems as well, so one run shows everything);
    /// otherwise the rules' verdict.
    ///
    /// # Errors
    /// The problems of the layers, then those of the rules.
    pub fn check(&self) -> Result<Validation, Vec<ConfigProblem>> {
        let validation = self.validate();
        if self.problems.is_empty() {
            return Ok(validation);
        }
        let mut problems = self.problems.clone();
        problems.extend(validation.errors);
        Err(problems)
    }

    /// The layers applied, in order, for logs: `built-in defaults`,
    /// `config/default.toml`, `env DS_STORAGE__MODE`, …
    pub fn layers(&self) -> Vec<String> {
        self.origins
            .iter()
            .map(|origin| match origin {
                Origin::BuiltIn(label) => label.clone(),
                Origin::File { path, .. } => path.display().to_string(),
                Origin::Env(name) => format!("env {name}"),
            })
            .collect()
    }

    /// Where the value of the dotted `key` came from:
    /// `config/prod.toml:7`, `env DS_SERVER__BIND_ADDRESS`,
    /// `built-in profile prod`, `built-in defaults`.
    pub fn source_of(&self, key: &str) -> String {
        let Some(metadata) = self.figment.find_metadata(key) else {
            return "unknown source".into();
        };
        match &metadata.source {
            Some(Source::File(path)) => self
                .origins
                .iter()
                .find(|origin| matches!(origin, Origin::File { path: p, .. } if p == path))
                .map_or_else(|| path.display().to_string(), |origin| origin.describe(key)),
            Some(Source::Custom(name)) => format!("env {name}"),
            _ => metadata.name.to_string(),
        }
    }
}

/// Loads the configuration from every layer. Never fails: problems are
/// collected in [`LoadedConfig::problems`] and the offending values skipped.
pub fn load(options: &ConfigLoadOptions) -> LoadedConfig {
    let schema = schema();
    let mut loader = Loader {
        schema: &schema,
        layers: vec![Layer {
            origin: Origin::BuiltIn("built-in defaults".into()),
            dict: schema.clone(),
        }],
        problems: Vec::new(),
    };

    let profile = DeploymentProfile::parse(&options.profile).unwrap_or_else(|problem| {
        loader.problems.push(problem.with_key("profile"));
        DeploymentProfile::Default
    });
    if let Some(text) = profile.built_in_toml() {
        let label = format!("built-in profile {profile}");
        match parse_toml(Path::new(&label), text) {
            Ok((dict, _)) => loader.add(Origin::BuiltIn(label), dict),
            Err(problem) => loader.problems.push(problem),
        }
    }

    let dir = match &options.config_dir {
        ConfigDir::None => None,
        ConfigDir::Default => Some((PathBuf::from("config"), false)),
        ConfigDir::Path(path) => Some((path.clone(), true)),
    };
    let mut profile_file_found = false;
    if let Some((dir, required)) = dir {
        if required && !dir.is_dir() {
            loader.problems.push(
                ConfigProblem::new(
                    format!("config directory {} does not exist", dir.display()),
                    "point --config-dir / DS_CONFIG_DIR at the directory holding default.toml, \
                     or leave both unset to use ./config",
                )
                .with_source("--config-dir"),
            );
        }
        loader.file(&dir.join("default.toml"));
        if profile != DeploymentProfile::Default {
            profile_file_found = loader.file(&dir.join(format!("{profile}.toml")));
        }
        loader.file(&dir.join("local.toml"));
    }
    if let DeploymentProfile::Custom(name) = &profile
        && !profile_file_found
    {
        loader.problems.push(
            ConfigProblem::new(
                format!(
                    "profile {name:?} is not built in and there is no {name}.toml in the \
                         config directory"
                ),
                profile_hint(),
            )
            .with_key("profile"),
        );
    }
    if let Some(path) = &options.config_file
        && !loader.file(path)
    {
        loader.problems.push(
            ConfigProblem::new(
                format!(
                    "the file given with --config, {}, does not exist",
                    path.display()
                ),
                "check the path; relative paths start from the working directory",
            )
            .with_source("--config"),
        );
    }
    loader.environment();

    let Loader {
        layers,
        mut problems,
        ..
    } = loader;
    let figment = layers.iter().fold(Figment::new(), |figment, layer| {
        figment.merge(layer.clone())
    });
    let config = figment.extract::<Config>().unwrap_or_else(|error| {
        problems.push(ConfigProblem::new(
            format!("cannot assemble the configuration: {}", error.kind),
            "report this as a bug, with the output of `print-config --sources`",
        ));
        Config::default()
    });
    LoadedConfig {
        config,
        profile,
        figment,
        origins: layers.into_iter().map(|layer| layer.origin).collect(),
        problems,
    }
}

/// Every key with its built-in default (unset options as empty values).
pub(super) fn schema() -> Dict {
    Value::serialize(Config::default())
        .ok()
        .and_then(Value::into_dict)
        .unwrap_or_default()
}

struct Loader<'a> {
    schema: &'a Dict,
    layers: Vec<Layer>,
    problems: Vec<ConfigProblem>,
}

impl Loader<'_> {
    /// Adds a file layer; returns whether the file exists.
    fn file(&mut self, path: &Path) -> bool {
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return false,
            Err(error) => {
                self.problems.push(
                    ConfigProblem::new(
                        format!("cannot read {}: {error}", path.display()),
                        "make the file readable by the server's user, or remove it",
                    )
                    .with_source(path.display().to_string()),
                );
                return true;
            }
        };
        let Ok(text) = String::from_utf8(text) else {
            self.problems.push(
                ConfigProblem::new(
                    format!("{} is not UTF-8 text", path.display()),
                    "save the file as UTF-8 TOML",
                )
                .with_source(path.display().to_string()),
            );
            return true;
        };
        match parse_toml(path, &text) {
            Ok((dict, origin)) => self.add(origin, dict),
            Err(problem) => self.problems.push(problem),
        }
        true
    }

    /// Checks a layer's keys and values, keeping the good ones.
    fn add(&mut self, origin: Origin, dict: Dict) {
        let dict = self.check_dict(dict, self.schema, "", &origin);
        self.layers.push(Layer { origin, dict });
    }

    fn check_dict(&mut self, dict: Dict, schema: &Dict, prefix: &str, origin: &Origin) -> Dict {
        let mut kept = Dict::new();
        for (name, value) in dict {
            let path = join(prefix, &name);
            match schema.get(&name) {
                None => {
                    let problem = unknown_key(self.schema, &path, origin);
                    self.problems.push(problem);
                }
                Some(Value::Dict(_, inner_schema)) => match value {
                    Value::Dict(tag, inner) => {
                        let inner = self.check_dict(inner, inner_schema, &path, origin);
                        kept.insert(name, Value::Dict(tag, inner));
                    }
                    other => self.problems.push(
                        ConfigProblem::new(
                            format!("`{path}` is a table, but {} is given", show(&path, &other)),
                            format!("set the keys under [{path}] one by one"),
                        )
                        .with_key(path.clone())
                        .with_source(origin.describe(&path)),
                    ),
                },
                Some(_) => match check_value(self.schema, &path, &value) {
                    Ok(()) => {
                        kept.insert(name, value);
                    }
                    Err(problem) => self
                        .problems
                        .push(problem.with_source(origin.describe(&path))),
                },
            }
        }
        kept
    }

    /// One layer per `DS_*` variable, so each value names its variable.
    fn environment(&mut self) {
        let mut vars = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(ENV_PREFIX) || ENV_NOT_KEYS.contains(&name) {
                continue;
            }
            match value.into_string() {
                Ok(value) => vars.push((name.to_owned(), value)),
                Err(_) => self.problems.push(
                    ConfigProblem::new(
                        format!("{name} is not valid UTF-8"),
                        format!("set {name} to UTF-8 text"),
                    )
                    .with_source(format!("env {name}")),
                ),
            }
        }
        vars.sort();
        for (name, raw) in vars {
            let origin = Origin::Env(name.clone());
            let segments: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            let path = segments.join(".");
            match lookup(self.schema, &segments) {
                Some(Value::Dict(..)) => self.problems.push(
                    ConfigProblem::new(
                        format!("`{path}` is a table and cannot be set as a whole"),
                        format!("set its keys one by one, as {name}__<KEY>"),
                    )
                    .with_key(path.clone())
                    .with_source(origin.describe(&path)),
                ),
                Some(default) if segments.iter().all(|s| !s.is_empty()) => {
                    let value = env_value(default, &raw);
                    match check_value(self.schema, &path, &value) {
                        Ok(()) => self.layers.push(Layer {
                            dict: nest(&segments, value),
                            origin,
                        }),
                        Err(problem) => self
                            .problems
                            .push(problem.with_source(origin.describe(&path))),
                    }
                }
                _ => {
                    let problem = unknown_key(self.schema, &path, &origin);
                    self.problems.push(problem);
                }
            }
        }
        // `RUST_LOG` wins over `observability.rust_log` from any other layer.
        if let Ok(filter) = std::env::var("RUST_LOG")
            && !filter.trim().is_empty()
        {
            let segments = ["observability".to_owned(), "rust_log".to_owned()];
            self.layers.push(Layer {
                origin: Origin::Env("RUST_LOG".into()),
                dict: nest(&segments, Value::from(filter)),
            });
        }
    }
}

/// Types an environment value by the key's default: strings stay strings
/// (so `1.2` or `4437` are not turned into numbers), lists are comma lists
/// (brackets and quotes tolerated), the rest is parsed as a scalar.
fn env_value(default: &Value, raw: &str) -> Value {
    match default {
        Value::String(..) | Value::Empty(..) => Value::from(raw.to_owned()),
        Value::Array(..) => {
            let trimmed = raw.trim();
            let inner = trimmed
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .unwrap_or(trimmed);
            let items: Vec<Value> = inner
                .split(',')
                .map(|item| item.trim().trim_matches(|c| c == '"' || c == '\''))
                .filter(|item| !item.is_empty())
                .map(|item| Value::from(item.to_owned()))
                .collect();
            Value::from(items)
        }
        _ => scalar(raw.trim()),
    }
}

/// A boolean or number when the text is one, else the text itself (which
/// then fails the type check with the text shown).
fn scalar(text: &str) -> Value {
    if let Ok(flag) = text.parse::<bool>() {
        Value::from(flag)
    } else if let Ok(n) = text.parse::<u64>() {
        Value::from(n)
    } else if let Ok(n) = text.parse::<i64>() {
        Value::from(n)
    } else if let Some(n) = text.parse::<f64>().ok().filter(|n| {
        n.is_finite()
            && text
                .chars()
                .all(|c| c.is_ascii_digit() || ".-+eE".contains(c))
    }) {
        Value::from(n)
    } else {
        Value::from(text.to_owned())
    }
}

/// Checks one value by deserializing the defaults with it in place.
fn check_value(schema: &Dict, path: &str, value: &Value) -> Result<(), ConfigProblem> {
    let mut probe = schema.clone();
    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
    insert(&mut probe, &segments, value.clone());
    match Value::from(probe).deserialize::<Config>() {
        Ok(_) => Ok(()),
        Err(error) => Err(bad_value(path, value, &error.kind)),
    }
}

fn bad_value(path: &str, value: &Value, kind: &figment::error::Kind) -> ConfigProblem {
    use figment::error::Kind;
    let shown = show(path, value);
    let (message, hint) = match kind {
        Kind::UnknownVariant(found, expected) => (
            format!("`{path}` = {found:?} is not an accepted value"),
            format!("use one of: {}", expected.join(", ")),
        ),
        Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) => (
            format!("`{path}` = {shown} is not {}", describe_expected(expected)),
            format!("set `{path}` to {}", describe_expected(expected)),
        ),
        other => (
            format!("`{path}` = {shown}: {other}"),
            format!("check the value of `{path}` against config/default.toml"),
        ),
    };
    ConfigProblem::new(message, hint).with_key(path)
}

fn describe_expected(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a sequence" => "a list (a TOML array, or a comma list in an environment variable)".into(),
        "a boolean" => "true or false".into(),
        other => other.to_owned(),
    }
}

fn unknown_key(schema: &Dict, path: &str, origin: &Origin) -> ConfigProblem {
    let suggestion = suggest(schema, path);
    let hint = match (&suggestion, origin) {
        (Some(known), Origin::Env(_)) => format!("did you mean {}?", env_var(known)),
        (Some(known), _) => format!("did you mean `{known}`?"),
        (None, _) => {
            "remove it; config/default.toml lists every key (or run `print-config`)".to_owned()
        }
    };
    ConfigProblem::new(format!("unknown key `{path}`"), hint)
        .with_key(path)
        .with_source(origin.describe(path))
}

/// The environment variable that sets a dotted key.
pub fn env_var(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

pub(super) fn collect_leaves(dict: &Dict, prefix: &str, out: &mut Vec<String>) {
    for (name, value) in dict {
        let path = join(prefix, name);
        match value {
            Value::Dict(_, inner) => collect_leaves(inner, &path, out),
            _ => out.push(path),
        }
    }
}

fn lookup<'a>(dict: &'a Dict, segments: &[String]) -> Option<&'a Value> {
    let (first, rest) = segments.split_first()?;
    let value = dict.get(first)?;
    if rest.is_empty() {
        return Some(value);
    }
    match value {
        Value::Dict(_, inner) => lookup(inner, rest),
        _ => None,
    }
}

fn insert(dict: &mut Dict, segments: &[String], value: Value) {
    let Some((first, rest)) = segments.split_first() else {
        return;
    };
    if rest.is_empty() {
        dict.insert(first.clone(), value);
        return;
    }
    let entry = dict
        .entry(first.clone())
        .or_insert_with(|| Value::from(Dict::new()));
    if let Value::Dict(_, inner) = entry {
        insert(inner, rest, value);
    }
}

fn nest(segments: &[String], value: Value) -> Dict {
    let mut dict = Dict::new();
    insert(&mut dict, segments, value);
    dict
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A value as an operator would write it in TOML; secrets are not shown.
pub(super) fn show(path: &str, value: &Value) -> String {
    if is_secret(path) {
        return "<redacted>".into();
    }
    match value {
        Value::String(_, text) => match shown_value(path, text) {
            Some(text) => format!("{text:?}"),
            None => "<redacted>".into(),
        },
        _ => show_value(value),
    }
}

fn show_value(value: &Value) -> String {
    match value {
        Value::String(_, s) => format!("{s:?}"),
        Value::Char(_, c) => format!("{:?}", c.to_string()),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => n
            .to_u128()
            .map(|n| n.to_string())
            .or_else(|| n.to_i128().map(|n| n.to_string()))
            .or_else(|| n.to_f64().map(|n| n.to_string()))
            .unwrap_or_else(|| "a number".into()),
        Value::Empty(..) => "nothing".into(),
        Value::Dict(..) => "a table".into(),
        Value::Array(_, items) => {
            let items: Vec<String> = items.iter().map(show_value).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_follow_the_default_type() {
        let string = Value::from("x".to_owned());
        assert_eq!(env_value(&string, "1.2"), Value::from("1.2".to_owned()));
        let list = Value::from(Vec::<Value>::new());
        assert_eq!(
            env_value(&list, " a, b ,,c"),
            Value::from(vec![
                Value::from("a".to_owned()),
                Value::from("b".to_owned()),
                Value::from("c".to_owned())
            ])
        );
        assert_eq!(
            env_value(&list, "[\"h2\", 'http/1.1']"),
            Value::from(vec![
                Value::from("h2".to_owned()),
                Value::from("http/1.1".to_owned())
            ])
        );
        assert_eq!(env_value(&list, ""), Value::from(Vec::<Value>::new()));
        assert_eq!(env_value(&Value::from(1u64), "7"), Value::from(7u64));
        assert_eq!(env_value(&Value::from(1.0f64), "0.5"), Value::from(0.5f64));
        assert_eq!(
            env_value(&Value::from(1u64), "lots"),
            Value::from("lots".to_owned())
        );
        assert_eq!(
            env_value(&Value::from(1u64), "inf"),
            Value::from("inf".to_owned())
        );
        assert_eq!(env_value(&Value::from(true), "false"), Value::from(false));
    }
}
