// Pocket TTS on ONNX Runtime Web: the browser mirror of the Python engine
// (src/pocket_tts_onnx/runtime/engine.py).
//
// Per text chunk: copy of the voice state, text_conditioner -> flow_lm_main with an empty
// sequence, then the autoregressive loop from a NaN BOS latent with no text, the EOS rule,
// noise with temperature, the flow head's solver steps, and streaming Mimi decoding with a
// fresh decoder state and a 5 ms fade-in per chunk. States loop back by the names the
// manifest gives, never by position.

import * as ort from "onnxruntime-web/wasm";

import { fadeIn, prepareVoiceAudio, VoiceError } from "./audio.js";
import { readNpz } from "./npz.js";
import { createRng } from "./rng.js";
import { estimateMaxFrames, InvalidInputError, textRules, textToChunkTokens } from "./text.js";
import { loadTokenizer } from "./tokenizer.js";

export { ort, InvalidInputError, VoiceError };

export const GRAPH_NAMES = [
  "text_conditioner",
  "mimi_encoder",
  "flow_lm_main",
  "flow_lm_flow",
  "mimi_decoder",
];
const SCHEMA_VERSION = 1;
const FLOW_TYPES = ["lsd", "flow_matching", "drifting", "pointwise"];
const TEXT_RULE_KEYS = Object.keys(textRules());
const REQUIRED_KEYS = ["sample_rate", "frame_rate", "latent_dim", "d_model", "flow_type",
  "voice_cloning", "defaults", "text", "tokenizer", "graphs"];
export const VOICE_FORMAT = "pocket-tts-onnx voice v1";
// Mimi decodes at most this many latents per call, as the Python engine.
export const MAX_DECODE_FRAMES = 16;

export class BundleError extends Error {
  constructor(message) {
    super(message);
    this.name = "BundleError";
  }
}

const ARRAYS = { float32: Float32Array, int64: BigInt64Array };

function zeros(dtype, shape) {
  const Type = ARRAYS[dtype];
  if (!Type) throw new BundleError(`unsupported state dtype ${dtype} in the manifest`);
  return new ort.Tensor(dtype, new Type(shape.reduce((a, b) => a * b, 1)), shape);
}

// A state's value before any step: zeros, every dynamic (named) axis at 0.
const initialShape = (spec) => spec.shape.map((d) => (typeof d === "string" ? 0 : d));

async function fetchBytes(url, what) {
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

function checkManifest(m, url) {
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
  const unknown = Object.keys(m.text).filter((k) => !TEXT_RULE_KEYS.includes(k));
  if (unknown.length) {
    throw new BundleError(
      `unknown text rule(s) ${unknown.join(", ")} in the bundle: it may come from a newer exporter`,
    );
  }
  for (const name of GRAPH_NAMES) {
    if (!m.graphs[name]) throw new BundleError(`${url} lists no graph ${name}`);
  }
}

export class PocketTTS {
  /**
   * Load a bundle: `url` is its directory (or its manifest.json). Options: precision
   * ("int8" | "fp32", default int8 as the Python runtime), verifyChecksums (default true),
   * onProgress(message).
   */
  static async load(url, { precision = "int8", verifyChecksums = true, onProgress = () => {} } = {}) {
    if (!["int8", "fp32"].includes(precision)) {
      throw new InvalidInputError(`precision must be int8 or fp32, got ${JSON.stringify(precision)}`);
    }
    const manifestUrl = new URL(url.endsWith(".json") ? url : url.replace(/\/?$/, "/manifest.json"),
      globalThis.location?.href);
    const base = new URL(".", manifestUrl);
    onProgress(`reading ${manifestUrl}`);
    const raw = await fetchBytes(manifestUrl, "the bundle manifest");
    let manifest;
    try {
      manifest = JSON.parse(new TextDecoder().decode(raw));
    } catch (e) {
      throw new BundleError(`${manifestUrl} is not valid JSON (${e.message}): is this a bundle?`);
    }
    checkManifest(manifest, manifestUrl);

    const sessions = {};
    for (const name of GRAPH_NAMES) {
      const entry = manifest.graphs[name];
      const file = entry.files[precision];
      if (!file) {
        throw new BundleError(
          `the bundle has no ${precision} file for ${name}: re-export with --quantize, or use fp32`,
        );
      }
      onProgress(`loading ${file}`);
      const bytes = await fetchBytes(new URL(file, base), name);
      // crypto.subtle only exists in secure contexts (https, localhost).
      if (verifyChecksums && globalThis.crypto?.subtle && (await sha256Hex(bytes)) !== entry.sha256[file]) {
        throw new BundleError(
          `${file} does not match the sha256 in manifest.json: corrupted or replaced; re-export it`,
        );
      }
      try {
        sessions[name] = await ort.InferenceSession.create(bytes, {
          executionProviders: ["wasm"],
          graphOptimizationLevel: "all",
        });
      } catch (e) {
        throw new BundleError(`ONNX Runtime cannot load ${file}: ${e.message}`);
      }
    }
    onProgress("loading the tokenizer");
    const tokenizer = loadTokenizer(
      await fetchBytes(new URL(manifest.tokenizer.file, base), "the tokenizer"),
      manifest.tokenizer.kind,
    );
    return new PocketTTS(manifest, sessions, tokenizer, precision);
  }

  constructor(manifest, sessions, tokenizer, precision) {
    this.manifest = manifest;
    this.precision = precision;
    this.tokenizer = tokenizer;
    this.rules = textRules(manifest.text);
    this._sessions = sessions;
    this._specs = manifest.graphs;
    for (const name of GRAPH_NAMES) {
      const spec = this._specs[name];
      const want = [...spec.inputs.map((t) => t.name), ...spec.states.map((s) => s.name)].sort();
      const have = [...sessions[name].inputNames].sort();
      if (want.join() !== have.join()) {
        throw new BundleError(`graph ${name}: inputs ${have} do not match the manifest's ${want}`);
      }
    }
    const main = manifest.graphs.flow_lm_main;
    this.modelId = main.sha256[main.files.fp32];
  }

  get sampleRate() {
    return this.manifest.sample_rate;
  }

  /** The text chunks and token ids the model is fed (the Python text_to_chunk_tokens). */
  textChunks(text) {
    return textToChunkTokens(text, this.tokenizer, this.rules);
  }

  /** flow_lm_main states before any prompt (what no voice uses). */
  emptyState() {
    return Object.fromEntries(
      this._specs.flow_lm_main.states.map((s) => [s.name, zeros(s.dtype, initialShape(s))]),
    );
  }

  /** Clone a voice from audio: `channels` is [Float32Array, ...] at `sampleRate`. */
  async voiceFromAudio(channels, sampleRate) {
    if (!this.manifest.voice_cloning) {
      throw new VoiceError(
        "this bundle was exported from weights without voice cloning; load a precomputed " +
          "voice (.npz) instead",
      );
    }
    const mono = prepareVoiceAudio(channels, sampleRate, this.sampleRate);
    const { latents } = await this._sessions.mimi_encoder.run({
      audio: new ort.Tensor("float32", mono, [1, 1, mono.length]),
    });
    const { states } = await this._flowLm(this.emptyState(), this._emptySequence(), latents);
    return { states, modelId: this.modelId };
  }

  /** Load a voice .npz written by `pocket-tts-onnx voice` / Voice.save. */
  async loadVoice(buffer, { checkModel = true } = {}) {
    let parsed;
    try {
      parsed = await readNpz(buffer);
    } catch (e) {
      throw new VoiceError(`cannot read the voice file: ${e.message}`);
    }
    if (parsed.metadata.format !== VOICE_FORMAT) {
      throw new VoiceError("this .npz is not a pocket-tts-onnx voice file");
    }
    const states = {};
    for (const spec of this._specs.flow_lm_main.states) {
      const got = parsed.arrays[spec.name];
      if (!got) throw new VoiceError(`the voice lacks state ${spec.name}: not a voice for this model`);
      const ok =
        got.shape.length === spec.shape.length &&
        spec.shape.every((d, i) => typeof d === "string" || d === got.shape[i]) &&
        got.dtype === spec.dtype;
      if (!ok) {
        throw new VoiceError(
          `voice state ${spec.name} has shape [${got.shape}] ${got.dtype}, this model expects ` +
            `[${spec.shape}] ${spec.dtype}: the voice was made for a different model`,
        );
      }
      states[spec.name] = new ort.Tensor(got.dtype, got.data, got.shape);
    }
    const modelId = parsed.metadata.model_id ?? "";
    if (checkModel && modelId !== this.modelId) {
      throw new VoiceError(
        `the voice was computed with another model (id ${modelId.slice(0, 12)}..., this bundle ` +
          `is ${this.modelId.slice(0, 12)}...): recompute it from audio for this bundle`,
      );
    }
    return { states, modelId };
  }

  /** Synthesize the whole text; returns mono float32 samples at `sampleRate`. */
  async generate(text, voice = null, params = {}) {
    const pieces = [];
    for await (const chunk of this.stream(text, voice, params)) pieces.push(chunk.samples);
    const out = new Float32Array(pieces.reduce((n, p) => n + p.length, 0));
    let offset = 0;
    for (const p of pieces) {
      out.set(p, offset);
      offset += p.length;
    }
    return out;
  }

  /**
   * Yield audio as it is made: {samples, sampleRate, textChunk, textChunkIndex}. Parameters
   * (null/undefined take the manifest's defaults): temperature, lsdSteps, eosThreshold,
   * framesAfterEos, noiseClamp, seed, maxFrames (replaces the per-chunk length estimate),
   * firstChunkFrames (latents decoded for the first audio of each text chunk, default 1),
   * decodeFrames (latents per later decoder call, default 4).
   */
  async *stream(text, voice = null, params = {}) {
    const p = this._params(params);
    const chunks = this.textChunks(text);
    if (voice !== null && !(voice && voice.states)) {
      throw new VoiceError("voice must come from voiceFromAudio() or loadVoice()");
    }
    const start = voice ? voice.states : this.emptyState();
    const rng = createRng(p.seed);
    for (const [index, chunk] of chunks.entries()) {
      const decoder = new Decoder(this);
      let block = [];
      let need = p.firstChunkFrames;
      const emit = async () => {
        const samples = await decoder.decode(block);
        block = [];
        need = p.decodeFrames;
        return { samples, sampleRate: this.sampleRate, textChunk: chunk.text, textChunkIndex: index };
      };
      for await (const latent of this._chunkLatents(chunk, start, p, rng)) {
        block.push(latent);
        if (block.length >= need) yield await emit();
      }
      if (block.length) yield await emit();
    }
  }

  _params({
    temperature = null,
    lsdSteps = null,
    eosThreshold = null,
    framesAfterEos = null,
    noiseClamp = null,
    seed = null,
    maxFrames = null,
    firstChunkFrames = 1,
    decodeFrames = 4,
  } = {}) {
    const d = this.manifest.defaults;
    const p = {
      temperature: temperature ?? d.temperature,
      lsdSteps: lsdSteps ?? d.decode_steps,
      eosThreshold: eosThreshold ?? d.eos_threshold,
      framesAfterEos: framesAfterEos ?? d.frames_after_eos,
      noiseClamp: noiseClamp ?? d.noise_clamp,
      seed,
      maxFrames,
      firstChunkFrames,
      decodeFrames,
    };
    const isInt = Number.isInteger;
    const fail = (message) => {
      throw new InvalidInputError(message);
    };
    if (typeof p.temperature !== "number" || !Number.isFinite(p.temperature) || p.temperature < 0) {
      fail(`temperature must be a finite number >= 0, got ${p.temperature}`);
    }
    if (!isInt(p.lsdSteps) || p.lsdSteps < 1) fail(`LSD steps must be an integer >= 1, got ${p.lsdSteps}`);
    if (typeof p.eosThreshold !== "number" || Number.isNaN(p.eosThreshold)) {
      fail(`eos threshold must be a number, got ${p.eosThreshold}`);
    }
    if (p.framesAfterEos !== null && (!isInt(p.framesAfterEos) || p.framesAfterEos < 0)) {
      fail(`framesAfterEos must be an integer >= 0, got ${p.framesAfterEos}`);
    }
    if (p.noiseClamp !== null && !(typeof p.noiseClamp === "number" && p.noiseClamp > 0)) {
      fail(`noiseClamp must be > 0 or null, got ${p.noiseClamp}`);
    }
    if (p.maxFrames !== null && (!isInt(p.maxFrames) || p.maxFrames < 1)) {
      fail(`maxFrames must be an integer >= 1, got ${p.maxFrames}`);
    }
    if (p.seed !== null && !isInt(p.seed)) fail(`seed must be an integer or null, got ${p.seed}`);
    for (const key of ["firstChunkFrames", "decodeFrames"]) {
      if (!isInt(p[key]) || p[key] < 1 || p[key] > MAX_DECODE_FRAMES) {
        fail(`${key} must be an integer in 1..${MAX_DECODE_FRAMES}, got ${p[key]}`);
      }
    }
    return p;
  }

  // Upstream's loop for one text chunk: yields latents (Float32Array of latent_dim).
  async *_chunkLatents(chunk, startState, p, rng) {
    const m = this.manifest;
    const d = m.defaults;
    const after = p.framesAfterEos ?? chunk.framesAfterEosGuess + d.frames_after_eos_guess_offset;
    const maxLen =
      p.maxFrames ??
      estimateMaxFrames(chunk.tokenIds.length, m.frame_rate, d.max_length_tokens_per_second,
        d.max_length_padding_seconds);
    const ids = BigInt64Array.from(chunk.tokenIds, (i) => BigInt(i));
    const { embeddings } = await this._sessions.text_conditioner.run({
      token_ids: new ort.Tensor("int64", ids, [1, ids.length]),
    });
    let { states } = await this._flowLm(startState, this._emptySequence(), embeddings);
    const L = m.latent_dim;
    let sequence = new ort.Tensor("float32", new Float32Array(L).fill(NaN), [1, 1, L]);
    const noText = new ort.Tensor("float32", new Float32Array(0), [1, 0, m.d_model]);
    let eosStep = null;
    for (let step = 0; step < maxLen; step++) {
      const out = await this._flowLm(states, sequence, noText);
      states = out.states;
      if (out.eosLogit > p.eosThreshold && eosStep === null && step >= d.min_frames_before_eos) {
        eosStep = step;
      }
      if (eosStep !== null && step >= eosStep + after) return;
      const latent = await this._sample(out.conditioning, p, rng);
      yield latent;
      sequence = new ort.Tensor("float32", latent, [1, 1, L]);
    }
  }

  async _flowLm(states, sequence, textEmbeddings) {
    const out = await this._sessions.flow_lm_main.run({
      sequence,
      text_embeddings: textEmbeddings,
      ...states,
    });
    const next = {};
    for (const s of this._specs.flow_lm_main.states) next[s.name] = out[`out_${s.name}`];
    return { conditioning: out.conditioning, eosLogit: out.eos_logit.data[0], states: next };
  }

  _emptySequence() {
    return new ort.Tensor("float32", new Float32Array(0), [1, 0, this.manifest.latent_dim]);
  }

  // N(0, temperature), truncated to [-clamp, clamp] by redrawing; exactly 0 at temperature 0.
  _noise(p, rng) {
    const std = Math.sqrt(p.temperature);
    const x = new Float32Array(this.manifest.latent_dim);
    for (let i = 0; i < x.length; i++) {
      let v = rng.normal() * std;
      while (p.noiseClamp !== null && std > 0 && Math.abs(v) > p.noiseClamp) v = rng.normal() * std;
      x[i] = v;
    }
    return x;
  }

  // The flow head's decode rule, one graph call per solver step.
  async _sample(conditioning, p, rng) {
    const L = this.manifest.latent_dim;
    const n = p.lsdSteps;
    let x = this._noise(p, rng);
    const head = async (times) => {
      const feeds = { c: conditioning, x: new ort.Tensor("float32", x, [1, L]) };
      for (const [name, value] of Object.entries(times)) {
        feeds[name] = new ort.Tensor("float32", Float32Array.of(value), [1, 1]);
      }
      return (await this._sessions.flow_lm_flow.run(feeds)).flow_dir.data;
    };
    // x + dir / n in float32, as numpy computes it.
    const euler = (dir) => x.map((v, k) => v + Math.fround(dir[k] / n));
    switch (this.manifest.flow_type) {
      case "lsd":
        for (let i = 0; i < n; i++) x = euler(await head({ s: i / n, t: (i + 1) / n }));
        break;
      case "flow_matching":
        for (let i = 0; i < n; i++) x = euler(await head({ t: i / n }));
        break;
      case "drifting":
        x = Float32Array.from(await head({}));
        break;
      case "pointwise": {
        const dir = await head({});
        x = x.map((v, k) => v + dir[k]);
        break;
      }
      default:
        throw new BundleError(`unknown flow head type ${this.manifest.flow_type}`);
    }
    return x;
  }
}

// Mimi decoding of one text chunk: fresh state and a fade-in at its start (upstream).
class Decoder {
  constructor(engine) {
    this._engine = engine;
    this._specs = engine._specs.mimi_decoder.states;
    this._states = Object.fromEntries(
      this._specs.map((s) => [s.name, zeros(s.dtype, initialShape(s))]),
    );
    this._first = true;
  }

  async decode(latents) {
    const L = this._engine.manifest.latent_dim;
    const pieces = [];
    for (let start = 0; start < latents.length; start += MAX_DECODE_FRAMES) {
      const part = latents.slice(start, start + MAX_DECODE_FRAMES);
      const batch = new Float32Array(part.length * L);
      part.forEach((latent, i) => batch.set(latent, i * L));
      const out = await this._engine._sessions.mimi_decoder.run({
        latent: new ort.Tensor("float32", batch, [1, part.length, L]),
        ...this._states,
      });
      for (const s of this._specs) this._states[s.name] = out[`out_${s.name}`];
      let audio = out.audio_frame.data;
      if (this._first) {
        audio = fadeIn(audio, this._engine.sampleRate);
        this._first = false;
      }
      pieces.push(audio);
    }
    if (pieces.length === 1) return pieces[0];
    const joined = new Float32Array(pieces.reduce((n, a) => n + a.length, 0));
    pieces.reduce((offset, a) => (joined.set(a, offset), offset + a.length), 0);
    return joined;
  }
}
