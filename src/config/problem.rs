//! [`ConfigProblem`]: one thing wrong with the configuration, where it came
//! from and how to fix it; [`ConfigError`]: all of them together.

use std::fmt;

/// One problem found in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The dotted key concerned, when there is one.
    pub key: Option<String>,
    /// Where the offending value came from: `config/local.toml:12`,
    /// `env DS_SERVER__PORT`, `built-in profile prod-tls`, `--config`.
    pub source: Option<String>,
    /// What is wrong, naming the key and the value.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

impl ConfigProblem {
    /// A problem with `message` and `hint`.
    pub fn new(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            key: None,
            source: None,
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// Names the key concerned.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Names where the value came from.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{source}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Every problem found while loading and validating, reported together.
///
/// Its `Display` is one line: the single problem, or a numbered list.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    problems: Vec<ConfigProblem>,
}

impl ConfigError {
    /// Wraps the problems found.
    pub fn new(problems: Vec<ConfigProblem>) -> Self {
        Self { problems }
    }

    /// The problems, in the order found.
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }

    /// One line naming every problem (without the hints when there is just
    /// one, since [`ConfigError::hint`] carries it then).
    pub fn cause(&self) -> String {
        match self.problems.as_slice() {
            [] => "no problems".into(),
            [only] => only.to_string(),
            many => {
                let items: Vec<String> = many
                    .iter()
                    .enumerate()
                    .map(|(i, p)| format!("({}) {p} [fix: {}]", i + 1, p.hint))
                    .collect();
                format!("{} problems: {}", many.len(), items.join(" "))
            }
        }
    }

    /// What to do: the single problem's hint, or a pointer to the list.
    pub fn hint(&self) -> String {
        match self.problems.as_slice() {
            [only] => only.hint.clone(),
            _ => "fix each problem listed; `durable-streams-server check-config` re-checks \
                  without starting the server"
                .into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: {}; hint: {}",
            self.cause(),
            self.hint()
        )
    }
}
