//! Hiding secrets in values that are logged or shown (`print-config`,
//! `Debug`, error messages).

/// What replaces a secret value.
pub const REDACTED: &str = "<redacted>";

/// `url` with the password of its user-info part replaced by
/// [`REDACTED`]; a `password=` query parameter is replaced too. Text that
/// is not a URL is redacted whole, since it could be anything.
pub fn redact_url_password(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return REDACTED.to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(REDACTED));
    }
    if parsed.query_pairs().any(|(name, _)| name == "password") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if name == "password" {
                    REDACTED.to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    // `Url` percent-encodes the marker's angle brackets; show them plainly.
    parsed.to_string().replace("%3Credacted%3E", REDACTED)
}
