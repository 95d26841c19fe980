//! The fuzz corpus as a regular test on stable Rust.
//!
//! `cargo fuzz` needs nightly and libFuzzer; CI has neither. What CI can do is
//! replay every committed input of every target (`fuzz/corpus/<target>/*`, the
//! minimized corpus, plus `fuzz/regressions/<target>/*`, inputs that once broke
//! a property) through the very same property functions the fuzz targets call:
//! `fuzz/src/lib.rs` is included here as a module. A regression that a past
//! fuzzing run found therefore fails this test on every CI run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

const FUZZ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz");

fn replay(target: &str, check: fn(&[u8])) {
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let dir = Path::new(FUZZ).join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(r.is_ok(), "{} breaks a property of `{target}`", f.display());
            n += 1;
        }
    }
    assert!(n > 0, "no corpus for `{target}` under {FUZZ}");
}

#[test]
fn frame_corpus_holds() {
    replay("frame", checks::frame);
}

#[test]
fn room_corpus_holds() {
    replay("room", checks::room);
}

#[test]
fn user_corpus_holds() {
    replay("user", checks::user);
}

#[test]
fn token_corpus_holds() {
    replay("token", checks::token);
}

/// The signed seeds really are accepted: the token target's oracle is not
/// vacuous.
#[test]
fn signed_seed_tokens_verify() {
    for t in checks::SIGNED_TOKENS.lines() {
        checks::token(t.as_bytes());
        let v = herald_edge::auth::Verifier::from_config(&herald_edge::config::AuthConfig {
            hs256_secret: Some(checks::FUZZ_SECRET.into()),
            rs256_public_key: Some(include_str!("fixtures/rsa-public.pem").into()),
            es256_public_key: Some(include_str!("fixtures/ec-public.pem").into()),
            ..Default::default()
        })
        .unwrap();
        assert!(futures::executor::block_on(v.verify(t)).is_ok(), "{t}");
    }
}

/// Prints the seed tokens of `fuzz/src/signed_tokens.txt` (run with
/// `--ignored --nocapture` to regenerate them).
#[test]
#[ignore]
fn print_signed_seed_tokens() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let exp = 4_102_444_800u64; // 2100-01-01
    let hs = EncodingKey::from_secret(checks::FUZZ_SECRET.as_bytes());
    let rs = EncodingKey::from_rsa_pem(include_bytes!("fixtures/rsa-private.pem")).unwrap();
    let es = EncodingKey::from_ec_pem(include_bytes!("fixtures/ec-private.pem")).unwrap();
    let claims = [
        serde_json::json!({"sub":"6","exp":exp}),
        serde_json::json!({"sub":"auth0|123","exp":exp,"rooms":["channel:*","dm:6-*"],"join":["team:1"],"publish":["channel:1"],"info":{"name":"Ann"}}),
        serde_json::json!({"sub":"a@b.io","exp":exp,"nbf":1,"iss":"https://issuer","aud":["herald","x"]}),
        serde_json::json!({"sub":"é☃","exp":exp,"aud":"herald"}),
    ];
    for (alg, key) in [
        (Algorithm::HS256, &hs),
        (Algorithm::HS384, &hs),
        (Algorithm::HS512, &hs),
        (Algorithm::RS256, &rs),
        (Algorithm::ES256, &es),
    ] {
        for c in &claims {
            println!("{}", encode(&Header::new(alg), c, key).unwrap());
        }
    }
}
