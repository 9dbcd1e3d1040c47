// Builds the pages the server embeds: bundles each page's script (with the WuKongIM JS
// SDK) and copies its HTML and CSS into crates/hongyan/web/<page>/. With --check,
// builds into a temporary folder and fails if the embedded copy differs, so a change to
// a source without `npm run build` cannot land.
import * as esbuild from "esbuild";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const embedded = path.join(here, "../crates/hongyan/web");
const pages = ["demo", "console"];
const check = process.argv.includes("--check");
const out = check ? fs.mkdtempSync(path.join(os.tmpdir(), "hongyan-web-")) : embedded;

for (const page of pages) {
  const dir = path.join(out, page);
  fs.mkdirSync(dir, { recursive: true });
  await esbuild.build({
    entryPoints: [path.join(here, page, "app.mjs")],
    bundle: true,
    minify: true,
    format: "iife",
    platform: "browser",
    target: "es2020",
    legalComments: "none",
    outfile: path.join(dir, "app.js"),
    logLevel: "warning",
  });
  for (const file of ["index.html", "style.css"]) {
    fs.copyFileSync(path.join(here, page, file), path.join(dir, file));
  }
}

if (check) {
  const stale = [];
  for (const page of pages) {
    for (const file of fs.readdirSync(path.join(out, page))) {
      const built = fs.readFileSync(path.join(out, page, file));
      const there = path.join(embedded, page, file);
      if (!fs.existsSync(there) || !built.equals(fs.readFileSync(there))) stale.push(`${page}/${file}`);
    }
  }
  fs.rmSync(out, { recursive: true, force: true });
  if (stale.length) {
    console.error(`crates/hongyan/web is stale (${stale.join(", ")}): run \`cd web && npm ci && npm run build\``);
    process.exit(1);
  }
}
