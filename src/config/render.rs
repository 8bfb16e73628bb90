//! The effective configuration as TOML, for `print-config`: every key in
//! order, unset ones as comments, optionally the layer that set each value,
//! and secret values redacted. The output is itself a valid `--config` file.

use figment::value::{Dict, Value};

use super::Config;
use super::load::{LoadedConfig, schema};

/// Keys whose values are never printed, neither by `print-config` nor in
/// problem messages. No key holds a secret yet; one that does (an OTLP
/// header carrying an API key, say) is listed here.
pub const SECRET_KEYS: &[&str] = &[];

pub use crate::redact::{REDACTED, redact_url_password};

/// Keys holding a URL whose password (`scheme://user:password@host`) is
/// secret: shown with the password replaced by [`REDACTED`], so operators
/// still see where the server connects.
pub const PASSWORD_URL_KEYS: &[&str] = &["storage.postgres.url"];

/// Whether the dotted `key` holds a secret.
pub fn is_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key)
}

/// The value of `key` as it may be shown: `None` when nothing of it may
/// be, the redacted URL for [`PASSWORD_URL_KEYS`], otherwise `raw`.
pub fn shown_value(key: &str, raw: &str) -> Option<String> {
    if is_secret(key) {
        None
    } else if PASSWORD_URL_KEYS.contains(&key) {
        Some(redact_url_password(raw))
    } else {
        Some(raw.to_owned())
    }
}

/// Renders the loaded configuration, with a `# <source>` comment after each
/// value when `with_sources` is set.
pub fn render(loaded: &LoadedConfig, with_sources: bool) -> String {
    let mut out = format!(
        "# Effective configuration of durable-streams-server\n# profile: {}\n# layers, later \
         winning: {}\n",
        loaded.profile(),
        loaded.layers().join(", ")
    );
    let source = |key: &str| loaded.source_of(key);
    let source: Option<&dyn Fn(&str) -> String> = if with_sources { Some(&source) } else { None };
    out.push_str(&render_config(loaded.config(), SECRET_KEYS, source));
    out
}

/// Renders `config` as TOML in the settings tree's order, replacing the
/// values of `secret_keys` with [`REDACTED`] and annotating each value with
/// `source(key)` when given. Unset keys appear as comments.
pub fn render_config(
    config: &Config,
    secret_keys: &[&str],
    source: Option<&dyn Fn(&str) -> String>,
) -> String {
    // `toml` keeps the struct's field order in its text output; a
    // `DocumentMut` keeps it while we walk the tables.
    let document = toml::to_string(config)
        .ok()
        .and_then(|text| text.parse::<toml_edit::DocumentMut>().ok())
        .unwrap_or_default();
    let mut out = String::new();
    render_table(
        &mut out,
        document.as_table(),
        &schema(),
        "",
        &Render {
            secret_keys,
            source,
        },
    );
    out
}

struct Render<'a> {
    secret_keys: &'a [&'a str],
    source: Option<&'a dyn Fn(&str) -> String>,
}

fn render_table(
    out: &mut String,
    table: &toml_edit::Table,
    schema: &Dict,
    prefix: &str,
    render: &Render<'_>,
) {
    let join = |name: &str| {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        }
    };
    for (name, item) in table.iter() {
        // Lists of tables (grants, identities) are shown inline, so they
        // stay next to their siblings and under their own key.
        let value = match item {
            toml_edit::Item::Value(value) => value.clone(),
            toml_edit::Item::ArrayOfTables(tables) => {
                toml_edit::Value::Array(tables.clone().into_array())
            }
            _ => continue,
        };
        let key = join(name);
        let shown = if render.secret_keys.contains(&key.as_str()) {
            format!("{REDACTED:?}")
        } else if let (true, Some(text)) =
            (PASSWORD_URL_KEYS.contains(&key.as_str()), value.as_str())
        {
            format!("{:?}", redact_url_password(text))
        } else {
            let mut value = value;
            value.decor_mut().clear();
            value.to_string()
        };
        let line = format!("{name} = {shown}");
        match render.source {
            Some(source) => out.push_str(&format!("{line:<44} # {}\n", source(&key))),
            None => out.push_str(&format!("{line}\n")),
        }
    }
    for (name, node) in schema {
        if !matches!(node, Value::Dict(..)) && !table.contains_key(name) {
            out.push_str(&format!("# {name} is not set\n"));
        }
    }
    let empty = Dict::new();
    for (name, item) in table.iter() {
        let Some(inner) = item.as_table() else {
            continue;
        };
        let path = join(name);
        out.push_str(&format!("\n[{path}]\n"));
        let inner_schema = match schema.get(name) {
            Some(Value::Dict(_, inner)) => inner,
            _ => &empty,
        };
        render_table(out, inner, inner_schema, &path, render);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_defaults_parse_back_to_the_defaults() {
        let text = render_config(&Config::default(), &[], None);
        let parsed: Config = toml::from_str(&text).expect("valid TOML");
        assert_eq!(parsed, Config::default());
        assert!(text.contains("# cert_path is not set"), "{text}");
        assert!(text.contains("[transport.tls]"), "{text}");
        assert!(text.starts_with("\n[server]\nbind_address = "), "{text}");
    }

    #[test]
    fn lists_of_tables_render_inline_and_parse_back() {
        let mut config = Config::default();
        let grant = crate::config::GrantConfig {
            paths: vec!["/v1/stream/public/**".into()],
            ops: vec![crate::config::AccessOp::Read],
        };
        config.auth.anonymous = vec![grant.clone()];
        config.auth.identities = vec![crate::config::IdentityConfig {
            name: Some("writer".into()),
            grants: vec![grant.clone(), grant],
            ..Default::default()
        }];
        let text = render_config(&config, &[], None);
        let parsed: Config = toml::from_str(&text).expect("valid TOML");
        assert_eq!(parsed, config, "{text}");
        assert!(
            text.contains("anonymous = [{ paths = [\"/v1/stream/public/**\"], ops = [\"read\"] }]"),
            "{text}"
        );
    }

    #[test]
    fn secret_keys_are_redacted() {
        let mut config = Config::default();
        config.observability.otlp.endpoint = "https://user:token@collector:4317".into();
        let text = render_config(&config, &["observability.otlp.endpoint"], None);
        assert!(!text.contains("token"), "{text}");
        assert!(text.contains("endpoint = \"<redacted>\""), "{text}");
    }

    #[test]
    fn url_passwords_are_redacted_and_the_rest_shown() {
        let mut config = Config::default();
        config.storage.postgres.url =
            Some("postgres://ds:s3cr%40t@db.internal:5432/streams?sslmode=verify-full".into());
        let text = render_config(&config, SECRET_KEYS, None);
        assert!(!text.contains("s3cr"), "{text}");
        assert!(
            text.contains(
                "url = \"postgres://ds:<redacted>@db.internal:5432/streams?sslmode=verify-full\""
            ),
            "{text}"
        );
        assert!(!format!("{config:?}").contains("s3cr"));
        let query = redact_url_password("postgresql://db/x?user=ds&password=hunter2");
        assert!(!query.contains("hunter2"), "{query}");
        assert!(query.contains("user=ds"), "{query}");
        assert_eq!(redact_url_password("not a url: pw"), REDACTED);
        assert_eq!(
            redact_url_password("postgres://db.internal/streams"),
            "postgres://db.internal/streams"
        );
    }

    #[test]
    fn sources_annotate_values() {
        let source = |key: &str| format!("from {key}");
        let text = render_config(&Config::default(), &[], Some(&source));
        assert!(
            text.lines()
                .any(|l| l.starts_with("bind_address = ")
                    && l.ends_with("# from server.bind_address")),
            "{text}"
        );
    }
}
