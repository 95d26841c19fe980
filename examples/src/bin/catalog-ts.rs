//! Prints the TypeScript declarations of the examples' event catalogs (chat,
//! membership, tasks) for the browser client; `examples/ts/events.d.ts` is this
//! output, and a test checks that it is up to date.
//!
//! ```sh
//! cargo run -p herald-examples --bin catalog-ts > examples/ts/events.d.ts
//! ```

fn main() {
    print!("{}", herald_examples::catalog_ts());
}
