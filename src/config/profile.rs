//! Deployment profiles: the five built-in ones, whose defaults are compiled
//! in (the same TOML as the shipped `config/<profile>.toml`, so the binary
//! behaves the same without a config directory), and custom ones that exist
//! only as `config/<name>.toml`.

use std::fmt;

use super::problem::ConfigProblem;

/// A deployment profile, chosen with `--profile` or `DS_PROFILE`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeploymentProfile {
    /// Minimal HTTP baseline: the built-in defaults.
    #[default]
    Default,
    /// Local development: loopback bind, debug logs.
    Dev,
    /// Production behind external TLS termination: file-durable storage
    /// under `/var/lib/durable-streams`, JSON logs, no wildcard CORS.
    Prod,
    /// `prod` plus TLS terminated by the server, HTTP/1.1 and HTTP/2.
    ProdTls,
    /// `prod` plus mutual TLS.
    ProdMtls,
    /// A profile that exists only as `config/<name>.toml`.
    Custom(String),
}

impl DeploymentProfile {
    /// Names of the built-in profiles.
    pub const BUILT_IN: [&'static str; 5] = ["default", "dev", "prod", "prod-tls", "prod-mtls"];

    /// Parses a profile name: a built-in one, or a custom name made of
    /// lowercase letters, digits, `-` and `_`.
    ///
    /// # Errors
    /// When the name cannot be a profile (`local` is the local override
    /// file, not a profile).
    pub fn parse(name: &str) -> Result<Self, ConfigProblem> {
        let name = name.trim();
        let profile = match name {
            "" | "default" => Self::Default,
            "dev" => Self::Dev,
            "prod" => Self::Prod,
            "prod-tls" => Self::ProdTls,
            "prod-mtls" => Self::ProdMtls,
            "local" => {
                return Err(ConfigProblem::new(
                    "profile name \"local\" is reserved for config/local.toml, which every \
                     profile loads",
                    profile_hint(),
                ));
            }
            custom => {
                let valid = custom.chars().enumerate().all(|(i, c)| {
                    c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || (i > 0 && (c == '-' || c == '_'))
                });
                if !valid {
                    return Err(ConfigProblem::new(
                        format!(
                            "profile name {custom:?} is not valid (lowercase letters, digits, \
                             '-' and '_')"
                        ),
                        profile_hint(),
                    ));
                }
                Self::Custom(custom.to_owned())
            }
        };
        Ok(profile)
    }

    /// The profile's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Default => "default",
            Self::Dev => "dev",
            Self::Prod => "prod",
            Self::ProdTls => "prod-tls",
            Self::ProdMtls => "prod-mtls",
            Self::Custom(name) => name,
        }
    }

    /// Whether production rules apply (no wildcard CORS unless
    /// acknowledged): the `prod*` profiles, built-in or custom.
    pub fn is_production(&self) -> bool {
        self.name().starts_with("prod")
    }

    /// The compiled-in defaults of a built-in profile, as TOML.
    pub fn built_in_toml(&self) -> Option<&'static str> {
        match self {
            Self::Default | Self::Custom(_) => None,
            Self::Dev => Some(include_str!("../../config/dev.toml")),
            Self::Prod => Some(include_str!("../../config/prod.toml")),
            Self::ProdTls => Some(include_str!("../../config/prod-tls.toml")),
            Self::ProdMtls => Some(include_str!("../../config/prod-mtls.toml")),
        }
    }
}

impl fmt::Display for DeploymentProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub(super) fn profile_hint() -> String {
    format!(
        "use one of {} (--profile or DS_PROFILE), or create config/<name>.toml for a custom profile",
        DeploymentProfile::BUILT_IN.join(", ")
    )
}
