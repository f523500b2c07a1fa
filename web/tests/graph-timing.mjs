// Per-graph timing of a bundle in onnxruntime-web's wasm backend under Node (the same
// WebAssembly kernels as the browser, without the page): flow-LM step at a given KV length
// (flow_lm_step and flow_lm_main), the flow head, and Mimi per 4-frame call.
//
//   node web/tests/graph-timing.mjs BUNDLE_DIR PRECISION [KV=100] [REPEATS=20]
//
// Prints {graph: ms per call (median)}. scripts/web_bench.py compares it with Python.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as ort from "onnxruntime-web/wasm";

const [dir, precision = "int8", kvArg = "100", repArg = "20"] = process.argv.slice(2);
const kv = Number(kvArg);
const repeats = Number(repArg);
ort.env.wasm.numThreads = 1;
const m = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
const session = (name) => {
  const entry = m.graphs[name];
  // A variant reads its weights from its contract graph's file (ONNX external data).
  const externalData = (entry.external?.[precision] ?? []).map((file) => ({
    path: file.split("/").pop(),
    data: new Uint8Array(readFileSync(join(dir, file))),
  }));
  return ort.InferenceSession.create(readFileSync(join(dir, entry.files[precision])), {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all",
    ...(externalData.length ? { externalData } : {}),
  });
};
const zeros = (dtype, shape) =>
  new ort.Tensor(dtype, dtype === "int64" ? new BigInt64Array(shape.reduce((a, b) => a * b, 1))
    : new Float32Array(shape.reduce((a, b) => a * b, 1)), shape);
const size = (spec, dyn) => spec.shape.map((d) => (typeof d === "string" ? dyn : d));

async function time(run) {
  for (let i = 0; i < 3; i++) await run();
  const ms = [];
  for (let i = 0; i < repeats; i++) {
    const t = performance.now();
    await run();
    ms.push(performance.now() - t);
  }
  ms.sort((a, b) => a - b);
  return ms[Math.floor(ms.length / 2)];
}

const L = m.latent_dim;
const D = m.d_model;
const out = {};
const seq = new ort.Tensor("float32", new Float32Array(L), [1, 1, L]);
const noText = new ort.Tensor("float32", new Float32Array(0), [1, 0, D]);
{
  const s = await session("flow_lm_main");
  const feeds = { sequence: seq, text_embeddings: noText };
  for (const st of m.graphs.flow_lm_main.states) {
    feeds[st.name] = st.upstream_key === "offset"
      ? new ort.Tensor("int64", BigInt64Array.of(BigInt(kv)), [1]) : zeros(st.dtype, size(st, kv));
  }
  out.flow_lm_main = await time(() => s.run(feeds));
}
if (m.graphs.flow_lm_step?.files?.[precision]) {
  const s = await session("flow_lm_step");
  const feeds = { sequence: seq, text_embeddings: noText,
    position: new ort.Tensor("int64", BigInt64Array.of(BigInt(kv)), [1]) };
  for (const b of m.graphs.flow_lm_step.buffers) {
    feeds[b.name] = zeros(b.dtype, [1, b.shape[1], 2 * kv, b.shape[3]]);
  }
  out.flow_lm_step = await time(() => s.run(feeds));
}
{
  const s = await session("flow_lm_flow");
  const Dz = m.graphs.flow_lm_flow.inputs[0].shape[1];
  const feeds = { c: zeros("float32", [1, Dz]), x: zeros("float32", [1, L]) };
  for (const t of m.flow_time_inputs ?? []) feeds[t] = zeros("float32", [1, 1]);
  out.flow_lm_flow = await time(() => s.run(feeds));
}
{
  const s = await session("mimi_decoder");
  let states = {};
  for (const st of m.graphs.mimi_decoder.states) states[st.name] = zeros(st.dtype, size(st, 0));
  const latent = zeros("float32", [1, 4, L]);
  out.mimi_decoder_4_frames = await time(async () => {
    const r = await s.run({ ...states, latent });
    states = Object.fromEntries(m.graphs.mimi_decoder.states.map((st) => [st.name, r[`out_${st.name}`]]));
  });
}
console.log(JSON.stringify(out));
