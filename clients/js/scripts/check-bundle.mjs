// The edge serves the client built from these sources at /herald.js (beside the
// demo page) from a copy committed in crates/herald-edge/src/herald.js. This checks
// that the copy matches a fresh build (`npm run build` first); with --write it
// updates the copy instead.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = join(dirname(fileURLToPath(import.meta.url)), "..");
const built = join(pkg, "dist/herald.js");
const committed = join(pkg, "../../crates/herald-edge/src/herald.js");
const fresh = readFileSync(built, "utf8");
if (process.argv.includes("--write")) {
  writeFileSync(committed, fresh);
  console.log(`updated ${committed}`);
} else if (readFileSync(committed, "utf8") !== fresh) {
  console.error(
    "crates/herald-edge/src/herald.js is out of date with clients/js/src.\n" +
      "Run `npm run build && node scripts/check-bundle.mjs --write` in clients/js, then rebuild herald.",
  );
  process.exit(1);
} else {
  console.log("crates/herald-edge/src/herald.js matches clients/js/src");
}
