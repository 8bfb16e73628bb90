//! `export` and `import` through the binary: a file store exported and
//! imported into an acid store, and into and out of PostgreSQL, reads back
//! the same; conflicts and damaged input fail with the `transfer` exit code.

use crate::common::postgres;
use crate::helpers::run;

const EXPORT: &str = r#"{"header":{"format":"durable-streams-export","version":1}}
{"stream":{"path":"/v1/stream/a","content_type":"text/plain","ttl_secs":60,"expires_at_ms":null,"created_at_ms":1,"base":"0000000000000000_0000000000000000","tail":"0000000000000000_0000000000000011","fork":null,"closed":true,"closed_by":null,"stream_seq":"7","soft_deleted":false,"producers":[{"id":"p","epoch":2,"seq":9}]}}
{"record":"aGVsbG8g"}
{"record":"d29ybGQ="}
{"end":{"records":2,"bytes":11,"crc32c":3381945770}}
{"summary":{"streams":1}}
"#;

fn store(mode: &str, dir: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("DS_STORAGE__MODE", mode.to_owned()),
        ("DS_STORAGE__DATA_DIR", dir.display().to_string()),
    ]
}

fn env<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn import_then_export_round_trips_between_backends() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, EXPORT).expect("write export");
    let file_store = store("file-durable", &dir.path().join("file"));
    let imported = run(
        dir.path(),
        &["import", input.to_str().expect("utf8")],
        &env(&file_store),
    );
    assert_eq!(imported.code, Some(0), "{imported:#?}");
    assert!(
        imported.stderr.contains("imported 1 streams"),
        "{imported:#?}"
    );

    let exported = run(dir.path(), &["export"], &env(&file_store));
    assert_eq!(exported.code, Some(0), "{exported:#?}");
    let normalise = |text: &str| {
        text.lines()
            .filter(|l| !l.contains("\"header\""))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(normalise(&exported.stdout), normalise(EXPORT));

    // Into acid, then out again: the same export.
    let copy = dir.path().join("copy.jsonl");
    std::fs::write(&copy, &exported.stdout).expect("write copy");
    let acid_store = store("acid", &dir.path().join("acid"));
    let imported = run(
        dir.path(),
        &["import", copy.to_str().expect("utf8")],
        &env(&acid_store),
    );
    assert_eq!(imported.code, Some(0), "{imported:#?}");
    let again = run(
        dir.path(),
        &["export", "--stream", "/v1/stream/*"],
        &env(&acid_store),
    );
    assert_eq!(normalise(&again.stdout), normalise(EXPORT));

    // A second import conflicts; skip leaves it, replace accepts it.
    let conflict = run(
        dir.path(),
        &["import", copy.to_str().expect("utf8")],
        &env(&acid_store),
    );
    let line = conflict.failed("transfer", 11);
    assert!(line.contains("/v1/stream/a already exists"), "{line}");
    let skipped = run(
        dir.path(),
        &[
            "import",
            "--on-conflict",
            "skip",
            copy.to_str().expect("utf8"),
        ],
        &env(&acid_store),
    );
    assert_eq!(skipped.code, Some(0), "{skipped:#?}");
    let replaced = run(
        dir.path(),
        &[
            "import",
            "--on-conflict",
            "replace",
            copy.to_str().expect("utf8"),
        ],
        &env(&acid_store),
    );
    assert_eq!(replaced.code, Some(0), "{replaced:#?}");
}

#[test]
fn damaged_exports_and_memory_mode_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let damaged = dir.path().join("damaged.jsonl");
    std::fs::write(&damaged, EXPORT.replace("d29ybGQ=", "d29ybGE=")).expect("write");
    let acid_store = store("acid", &dir.path().join("acid"));
    let run_damaged = run(
        dir.path(),
        &["import", damaged.to_str().expect("utf8")],
        &env(&acid_store),
    );
    let line = run_damaged.failed("transfer", 11);
    assert!(line.contains("does not match its end line"), "{line}");
    // Nothing half-imported is left behind.
    let exported = run(dir.path(), &["export"], &env(&acid_store));
    assert_eq!(exported.code, Some(0), "{exported:#?}");
    assert!(
        !exported.stdout.contains("/v1/stream/a"),
        "{}",
        exported.stdout
    );

    let memory = run(dir.path(), &["export"], &[]);
    let line = memory.failed("open_storage", 6);
    assert!(line.contains("memory"), "{line}");
}

#[test]
fn export_and_import_move_streams_into_and_out_of_postgres() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, EXPORT).expect("write export");
    let normalise = |text: &str| {
        text.lines()
            .filter(|l| !l.contains("\"header\""))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let url = postgres::database();
    let pg: Vec<(&str, &str)> = vec![
        ("DS_STORAGE__MODE", "postgres"),
        ("DS_STORAGE__POSTGRES__URL", &url),
    ];
    let imported = run(dir.path(), &["import", input.to_str().expect("utf8")], &pg);
    assert_eq!(imported.code, Some(0), "{imported:#?}");
    assert!(
        imported.stderr.contains("imported 1 streams"),
        "{imported:#?}"
    );
    let exported = run(dir.path(), &["export"], &pg);
    assert_eq!(exported.code, Some(0), "{exported:#?}");
    assert_eq!(normalise(&exported.stdout), normalise(EXPORT));

    // From postgres into a single-node store, and back out the same.
    let copy = dir.path().join("copy.jsonl");
    std::fs::write(&copy, &exported.stdout).expect("write copy");
    let acid_store = store("acid", &dir.path().join("acid"));
    let into_acid = run(
        dir.path(),
        &["import", copy.to_str().expect("utf8")],
        &env(&acid_store),
    );
    assert_eq!(into_acid.code, Some(0), "{into_acid:#?}");
    let again = run(dir.path(), &["export"], &env(&acid_store));
    assert_eq!(normalise(&again.stdout), normalise(EXPORT));

    // A second import into postgres conflicts, as with the other stores.
    let conflict = run(dir.path(), &["import", copy.to_str().expect("utf8")], &pg);
    let line = conflict.failed("transfer", 11);
    assert!(line.contains("/v1/stream/a already exists"), "{line}");

    // An unreachable database fails in open_storage, without the password.
    let unreachable = [
        ("DS_STORAGE__MODE", "postgres"),
        (
            "DS_STORAGE__POSTGRES__URL",
            "postgres://ds:hunter2@127.0.0.1:1/none?sslmode=disable",
        ),
        ("DS_STORAGE__POSTGRES__CONNECT_TIMEOUT_MS", "500"),
    ];
    let failed = run(dir.path(), &["export"], &unreachable);
    let line = failed.failed("open_storage", 6);
    assert!(!line.contains("hunter2"), "{line}");
    assert!(line.contains("127.0.0.1:1"), "{line}");
}
