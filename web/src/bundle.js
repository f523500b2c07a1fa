// Reading a bundle over HTTP: the manifest checks, file fetching with sha256 verification,
// ONNX Runtime sessions for the graphs of one precision, the tokenizer, and the
// zero-initialised states every runtime starts from (docs/state-design.md).

import * as ort from "onnxruntime-web/wasm";

import { loadTokenizer } from "./tokenizer.js";

export const GRAPH_NAMES = [
  "text_conditioner",
  "mimi_encoder",
  "flow_lm_main",
  "flow_lm_flow",
  "mimi_decoder",
];
export const SCHEMA_VERSION = 3;
const FLOW_TYPES = ["lsd", "flow_matching", "drifting", "pointwise"];
const REQUIRED_KEYS = ["sample_rate", "frame_rate", "latent_dim", "d_model", "flow_type",
  "voice_cloning", "defaults", "text", "tokenizer", "graphs"];

export class BundleError extends Error {
  constructor(message) {
    super(message);
    this.name = "BundleError";
  }
}

const ARRAYS = { float32: Float32Array, int64: BigInt64Array };

export function zeros(dtype, shape) {
  const Type = ARRAYS[dtype];
  if (!Type) throw new BundleError(`unsupported state dtype ${dtype} in the manifest`);
  return new ort.Tensor(dtype, new Type(shape.reduce((a, b) => a * b, 1)), shape);
}

// A state's value before any step: zeros, every dynamic (named) axis at 0.
export const initialShape = (spec) => spec.shape.map((d) => (typeof d === "string" ? 0 : d));

/** Fresh zero states for a graph's state specs, by name. */
export const zeroStates = (specs) =>
  Object.fromEntries(specs.map((s) => [s.name, zeros(s.dtype, initialShape(s))]));

export async function fetchBytes(url, what) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new BundleError(`cannot fetch ${what} from ${url}: ${e.message}`);
  }
  if (!response.ok) {
    throw new BundleError(
      `cannot fetch ${what} from ${url}: HTTP ${response.status}` +
        (response.status === 404 ? " (wrong bundle URL, or the file is missing)" : ""),
    );
  }
  return new Uint8Array(await response.arrayBuffer());
}

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

// A file the manifest names, resolved inside the bundle: no absolute paths, URLs or "..".
export function bundleUrl(base, name) {
  if (typeof name !== "string" || !name || /^([a-z][a-z0-9+.-]*:|[\\/])/i.test(name) ||
    name.split(/[\\/]/).includes("..")) {
    throw new BundleError(
      `manifest names ${JSON.stringify(name)}, which is outside the bundle; re-export the bundle`,
    );
  }
  return new URL(name, base);
}

/** Fetch a bundle file and check the sha256 the manifest gives for it (crypto.subtle only
 * exists in secure contexts: https and localhost; elsewhere the check is skipped). */
export async function fetchChecked(base, name, digest, what, verify = true) {
  const bytes = await fetchBytes(bundleUrl(base, name), what);
  if (verify && digest && globalThis.crypto?.subtle && (await sha256Hex(bytes)) !== digest) {
    throw new BundleError(
      `${name} does not match the sha256 in manifest.json: corrupted or replaced; re-export it`,
    );
  }
  return bytes;
}

/** Fetch and parse manifest.json; `url` is the bundle directory or the manifest itself. */
export async function fetchManifest(url) {
  const manifestUrl = new URL(url.endsWith(".json") ? url : url.replace(/\/?$/, "/manifest.json"),
    globalThis.location?.href);
  const raw = await fetchBytes(manifestUrl, "the bundle manifest");
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(raw));
  } catch (e) {
    throw new BundleError(`${manifestUrl} is not valid JSON (${e.message}): is this a bundle?`);
  }
  checkManifest(manifest, manifestUrl);
  return { manifest, base: new URL(".", manifestUrl) };
}

export function checkManifest(m, url) {
  if (!m || typeof m !== "object" || Array.isArray(m)) {
    throw new BundleError(`${url} does not hold a JSON object`);
  }
  if (!Number.isInteger(m.schema_version)) {
    throw new BundleError(`${url} has no integer schema_version; re-export the bundle`);
  }
  if (m.schema_version > SCHEMA_VERSION) {
    throw new BundleError(
      `manifest schema ${m.schema_version} is newer than this runtime supports (${SCHEMA_VERSION})`,
    );
  }
  for (const key of REQUIRED_KEYS) {
    if (!(key in m)) throw new BundleError(`${url} is incomplete: no "${key}"`);
  }
  if (!FLOW_TYPES.includes(m.flow_type)) {
    throw new BundleError(`unknown flow head type ${JSON.stringify(m.flow_type)} in ${url}`);
  }
  for (const name of GRAPH_NAMES) {
    if (!m.graphs[name]) throw new BundleError(`${url} lists no graph ${name}`);
  }
  const voices = m.voices ?? {};
  if (typeof voices !== "object" || Array.isArray(voices)) {
    throw new BundleError(`${url}: "voices" must map voice names to {file, sha256}`);
  }
  if (m.default_voice != null && !Object.hasOwn(voices, m.default_voice)) {
    throw new BundleError(`${url}: default_voice ${m.default_voice} is not among the voices`);
  }
}

let gpuAdapter; // undefined until asked: a WebGPU adapter, or null when there is none

async function hasWebGpu() {
  if (gpuAdapter === undefined) {
    try {
      gpuAdapter = (await globalThis.navigator?.gpu?.requestAdapter()) ?? null;
    } catch {
      gpuAdapter = null;
    }
  }
  return gpuAdapter !== null;
}

/** The ONNX Runtime session for one graph file. `externalData`: [{path, data}] for the files
 * the graph reads its weights from (a variant reads its contract graph's file; `path` is the
 * name the graph gives, relative to its own folder). `device` "webgpu" falls back to wasm when
 * the browser has no WebGPU adapter or the session cannot be created on it. */
// `spinning: false` stops ONNX Runtime's idle threads from spinning between calls: with more
// than one thread in a worker, spinning steals the core the other worker needs.
export async function createSession(bytes, file, device = "wasm", externalData = [], spinning = true) {
  const options = { graphOptimizationLevel: "all" };
  if (!spinning) options.extra = { session: { intra_op: { allow_spinning: "0" } } };
  if (externalData.length) options.externalData = externalData;
  if (device === "webgpu" && (await hasWebGpu())) {
    try {
      const session = await ort.InferenceSession.create(bytes, {
        ...options,
        executionProviders: ["webgpu", "wasm"],
      });
      session.device = "webgpu"; // nodes WebGPU cannot run still fall back to wasm
      return session;
    } catch (e) {
      console.warn(`WebGPU session for ${file} failed, using wasm: ${e.message}`);
    }
  }
  try {
    const session = await ort.InferenceSession.create(bytes, {
      ...options,
      executionProviders: ["wasm"],
    });
    session.device = "wasm";
    return session;
  } catch (e) {
    throw new BundleError(`ONNX Runtime cannot load ${file}: ${e.message}`);
  }
}

/** Fetch the manifest, then create a session for each of `graphs` at `precision` (with
 * `fastKv`, flow_lm_step replaces flow_lm_main when the bundle has it for that precision)
 * and load the tokenizer when text_conditioner is among them. Options as PocketTTS.load.
 * Returns {manifest, base, sessions, tokenizer}. */
export async function openBundle(url, { precision, verifyChecksums, onProgress, graphs, device,
  fastKv, spinning }) {
  onProgress(`reading ${url}`);
  const { manifest, base } = await fetchManifest(url);
  const held = manifest.precisions ?? ["fp32", "int8"]; // schema 2 did not record them
  if (!held.includes(precision)) {
    throw new BundleError(
      `this bundle has ${held.join(" and ")} graphs only, no ${precision}: ` +
        (precision === "int8"
          ? "re-export with --quantize, or use fp32"
          : "it was exported with --precision int8; use int8"),
    );
  }
  const sessions = {};
  const step = manifest.graphs.flow_lm_step;
  if (fastKv && step?.files?.[precision] && step.buffers?.length) {
    // KVCache holds float32 rows: a step graph exported with `--kv-dtype fp16` is left out
    // and the contract graph flow_lm_main (float32 states) runs instead.
    const other = step.buffers.find((b) => b.dtype !== "float32");
    if (other) {
      onProgress(`flow_lm_step stores K/V as ${other.dtype}, which this runtime does not ` +
        "read: running flow_lm_main instead");
    } else {
      graphs = graphs.map((g) => (g === "flow_lm_main" ? "flow_lm_step" : g));
    }
  }
  const fetched = new Map(); // file -> bytes: a file two graphs read is fetched once
  const fetchOnce = (file, entry, what) => {
    if (!fetched.has(file)) {
      fetched.set(file, fetchChecked(base, file, entry.sha256?.[file], what, verifyChecksums));
    }
    return fetched.get(file);
  };
  for (const name of graphs) {
    const entry = manifest.graphs[name];
    if (!entry) throw new BundleError(`the bundle lists no graph ${name}`);
    const file = entry.files[precision];
    if (!file) {
      throw new BundleError(
        `the bundle has no ${precision} file for ${name}: re-export with --quantize, or use fp32`,
      );
    }
    onProgress(`loading ${file}`);
    const bytes = await fetchOnce(file, entry, name);
    // The files its weights are read from (ONNX external data), named as in the graph.
    const externalData = [];
    for (const data of entry.external?.[precision] ?? []) {
      onProgress(`loading ${data} (weights of ${name})`);
      externalData.push({
        path: data.split("/").pop(),
        data: await fetchOnce(data, entry, `weights of ${name}`),
      });
    }
    sessions[name] = await createSession(bytes, file, device, externalData, spinning);
  }
  let tokenizer = null;
  if (graphs.includes("text_conditioner")) {
    onProgress("loading the tokenizer");
    const t = manifest.tokenizer;
    const bytes = await fetchChecked(base, t.file, t.sha256, "the tokenizer", verifyChecksums);
    tokenizer = loadTokenizer(bytes, t.kind);
  }
  return { manifest, base, sessions, tokenizer };
}
