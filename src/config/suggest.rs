//! "Did you mean": the known key closest to an unknown one.

use figment::value::Dict;

use super::load::collect_leaves;

/// A known key close to an unknown one: a sibling within a small edit
/// distance, or the only key anywhere with the same last segment.
pub(super) fn suggest(schema: &Dict, path: &str) -> Option<String> {
    let (parent, name) = path.rsplit_once('.').unwrap_or(("", path));
    let mut leaves = Vec::new();
    collect_leaves(schema, "", &mut leaves);
    let siblings: Vec<&String> = leaves
        .iter()
        .filter(|leaf| leaf.rsplit_once('.').map_or("", |(p, _)| p) == parent)
        .collect();
    let limit = (name.len() / 3).max(2);
    let close = siblings
        .iter()
        .map(|leaf| {
            let leaf_name = leaf.rsplit('.').next().unwrap_or(leaf);
            (edit_distance(leaf_name, name), *leaf)
        })
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance);
    if let Some((_, leaf)) = close {
        return Some(leaf.clone());
    }
    let mut prefixed = siblings.iter().filter(|leaf| {
        let leaf_name = leaf.rsplit('.').next().unwrap_or(leaf);
        leaf_name.starts_with(name) || name.starts_with(leaf_name)
    });
    if let (Some(only), None) = (prefixed.next(), prefixed.next()) {
        return Some((*only).clone());
    }
    let mut same_name = leaves
        .iter()
        .filter(|leaf| leaf.rsplit('.').next() == Some(name));
    match (same_name.next(), same_name.next()) {
        (Some(only), None) => Some(only.clone()),
        _ => None,
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::{env_var, schema};

    #[test]
    fn suggestions() {
        let schema = schema();
        assert_eq!(
            suggest(&schema, "server.bind_adress").as_deref(),
            Some("server.bind_address")
        );
        assert_eq!(
            suggest(&schema, "server.long_poll_timeout_secs").as_deref(),
            Some("transport.connection.long_poll_timeout_secs")
        );
        assert_eq!(suggest(&schema, "server.zzzzzzzz"), None);
        assert_eq!(
            env_var("transport.tls.cert_path"),
            "DS_TRANSPORT__TLS__CERT_PATH"
        );
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
