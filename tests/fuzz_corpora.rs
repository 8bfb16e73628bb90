//! Replays every fuzz corpus (`fuzz/corpus/<target>/`) through the function
//! its cargo-fuzz target calls, on the stable toolchain: the seeds, and each
//! input that once broke something, stay checked by `cargo test`.

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in targets::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{name}: empty corpus");
        for file in files {
            let data = std::fs::read(&file).expect("corpus file");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", file.display());
        }
    }
}

#[test]
fn the_seed_token_is_accepted_and_a_changed_one_is_not() {
    // Without this the tokens target could not tell a verifier that accepts
    // everything from one that accepts nothing.
    let seed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/tokens/seed-00"),
    )
    .expect("seed");
    let token = seed.strip_prefix("Bearer ").expect("a header value");
    assert_eq!(
        targets::token_principal(token).as_deref(),
        Some("fuzz-seed")
    );
    let (signed, signature) = token.rsplit_once('.').expect("three parts");
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let forged = format!("{signed}.{flipped}{}", &signature[1..]);
    assert_eq!(targets::token_principal(&forged), None);
}
