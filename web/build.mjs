// Build the demo page into dist/: esbuild bundles the page and its worker; ONNX Runtime's
// wasm files are copied next to them so nothing is fetched from a CDN.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, "dist");

rmSync(dist, { recursive: true, force: true });
mkdirSync(join(dist, "ort"), { recursive: true });
await build({
  entryPoints: { main: join(root, "src/main.js"), worker: join(root, "src/worker.js") },
  outdir: dist,
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "chrome110",
  minify: true,
  sourcemap: true,
  // Load ORT's wasm glue from dist/ort/ at run time instead of inlining it.
  conditions: ["onnxruntime-web-use-extern-wasm"],
  logLevel: "warning",
});
for (const file of ["ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"]) {
  copyFileSync(join(root, "node_modules/onnxruntime-web/dist", file), join(dist, "ort", file));
}
for (const file of ["index.html", "style.css"]) copyFileSync(join(root, file), join(dist, file));
console.log(`built ${dist}`);
