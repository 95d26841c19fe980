//! `examples/ts/events.d.ts` is the TypeScript rendering of the examples' event
//! catalogs (`herald_examples::catalog_ts`). This test fails when the Rust types
//! changed and the file was not regenerated; `HERALD_UPDATE_TS=1 cargo test -p
//! herald-examples --test catalog_ts` (or the `catalog-ts` binary) rewrites it.
//! `scripts/test-js.sh` type-checks `examples/ts/check.ts` against it and the client.
#![allow(clippy::unwrap_used)]

#[test]
fn generated_declarations_are_up_to_date() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ts/events.d.ts");
    let generated = herald_examples::catalog_ts();
    if std::env::var_os("HERALD_UPDATE_TS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date: run `cargo run -p herald-examples --bin catalog-ts > examples/ts/events.d.ts`.\n\
         generated:\n{generated}",
        path.display()
    );
}

#[test]
fn declarations_cover_every_event_with_json_numbers() {
    let ts = herald_examples::catalog_ts();
    for line in [
        "export type ServerEvents = {",
        "\"message:new\": NewMessage;",
        "\"member:added\": MemberChange;",
        "\"task:created\": Task;",
        "\"task:deleted\": TaskDeletedPayload;",
        "\"task:assigned\": Assignment;",
        "export type Task = {",
    ] {
        assert!(ts.contains(line), "missing `{line}` in:\n{ts}");
    }
    assert!(!ts.contains("bigint"), "u64 must be a JSON number:\n{ts}");
}
