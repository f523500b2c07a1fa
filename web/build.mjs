// Build the demo page into dist/: esbuild bundles the page and its workers; ONNX Runtime's
// wasm files are copied next to them so nothing is fetched from a CDN. Only the files this
// build writes are replaced: anything else in dist/ (a bundle exported there) is kept.
// The workers are built twice: with ONNX Runtime's WebAssembly-only build (the default),
// and as *-webgpu.js with its WebGPU build (twice the wasm size), loaded for ?device=webgpu.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, "dist");
const ORT_FILES = ["ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
  "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"];
const PAGES = ["index.html", "style.css"];
const ENTRIES = { main: "src/main.js", worker: "src/worker.js", "decoder-worker": "src/decoder-worker.js" };
const GPU_ENTRIES = { "worker-webgpu": "src/worker.js", "decoder-worker-webgpu": "src/decoder-worker.js" };

for (const name of [...Object.keys(ENTRIES), ...Object.keys(GPU_ENTRIES)]) {
  for (const ext of [".js", ".js.map"]) rmSync(join(dist, name + ext), { force: true });
}
for (const file of PAGES) rmSync(join(dist, file), { force: true });
rmSync(join(dist, "ort"), { recursive: true, force: true });
mkdirSync(join(dist, "ort"), { recursive: true });
const options = {
  outdir: dist,
  absWorkingDir: root, // aliases resolve from here, wherever the build is started
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "chrome110",
  minify: true,
  sourcemap: true,
  // Load ORT's wasm glue from dist/ort/ at run time instead of inlining it.
  conditions: ["onnxruntime-web-use-extern-wasm"],
  logLevel: "warning",
};
const entries = (map) => Object.fromEntries(Object.entries(map).map(([k, v]) => [k, join(root, v)]));
await build({ ...options, entryPoints: entries(ENTRIES) });
await build({
  ...options,
  entryPoints: entries(GPU_ENTRIES),
  alias: { "onnxruntime-web/wasm": "onnxruntime-web/webgpu" },
});
for (const file of ORT_FILES) {
  copyFileSync(join(root, "node_modules/onnxruntime-web/dist", file), join(dist, "ort", file));
}
for (const file of PAGES) copyFileSync(join(root, file), join(dist, file));
console.log(`built ${dist}`);
