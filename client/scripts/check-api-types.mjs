// Fails while src/lib/api-types.ts differs from what openapi-typescript makes of openapi.json (the
// gateway's OpenAPI document, which `make schemas` regenerates from its routes): the page's types
// must never drift from the API it calls. Part of `npm run lint`.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const client = join(dirname(fileURLToPath(import.meta.url)), "..");
const committed = join(client, "src", "lib", "api-types.ts");
const scratch = mkdtempSync(join(tmpdir(), "api-types-"));
const fresh = join(scratch, "api-types.ts");

try {
  // The same command as `npm run gen:api`, writing elsewhere.
  execFileSync(
    join(client, "node_modules", ".bin", "openapi-typescript"),
    [join(client, "openapi.json"), "--output", fresh],
    { cwd: client, stdio: ["ignore", "ignore", "inherit"] },
  );
  const want = readFileSync(fresh, "utf8");
  let have = "";
  try {
    have = readFileSync(committed, "utf8");
  } catch {
    // Missing: reported as drift below.
  }
  if (have !== want) {
    // exitCode, not exit(): the finally below must still remove the scratch directory.
    process.exitCode = 1;
    console.error(
      "src/lib/api-types.ts does not match client/openapi.json: the API changed since the types were generated.\n" +
        "Run `npm run gen:api` in client/ and commit the result (then fix what no longer type-checks).",
    );
  } else {
    console.log("src/lib/api-types.ts matches openapi.json.");
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
