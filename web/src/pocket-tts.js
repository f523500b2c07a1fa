// Pocket TTS on ONNX Runtime Web: the browser mirror of the Python engine
// (src/pocket_tts_onnx/runtime/engine.py).
//
// Per text chunk: copy of the voice state, text_conditioner -> flow_lm_main with an empty
// sequence, then the autoregressive loop from a NaN BOS latent with no text, the EOS rule,
// noise with temperature, the flow head's solver steps, and streaming Mimi decoding with a
// fresh decoder state and the manifest's fade-in per chunk. States loop back by the names the
// manifest gives, never by position. With the bundle's flow_lm_step graph the flow LM keeps
// its K/V cache in preallocated buffers (kv-cache.js) instead of passing it whole each step.
// With `timestamps: true` (a bundle with heads), each step's `queries` output is scored
// against those buffers and the chunks carry word events (timestamps.js, word-units.js).

import * as ort from "onnxruntime-web/wasm";

import { prepareVoiceAudio, VoiceError } from "./audio.js";
import {
  BundleError,
  createSession,
  fetchChecked,
  fetchManifest,
  GRAPH_NAMES,
  zeroStates,
} from "./bundle.js";
import { Decoder, maxDecodeFrames } from "./decoder.js";
import { KV_SLACK, KVCache } from "./kv-cache.js";
import { readNpz } from "./npz.js";
import { createRng } from "./rng.js";
import { drawNoise, solveFlow } from "./sampling.js";
import { PARAMETERS } from "./parameters.js";
import { estimateMaxFrames, InvalidInputError, textRules, textToChunkTokens } from "./text.js";
import {
  NO_HEADS,
  TextTiming,
  TimestampsUnavailableError,
  WordTimeline,
} from "./timestamps.js";
import { loadTokenizer } from "./tokenizer.js";
import { mapChunks } from "./word-units.js";

export {
  ort,
  BundleError,
  Decoder,
  GRAPH_NAMES,
  InvalidInputError,
  TimestampsUnavailableError,
  VoiceError,
};

const TEXT_RULE_KEYS = Object.keys(textRules());
export const VOICE_FORMAT = "pocket-tts-onnx voice v1";

export class PocketTTS {
  /**
   * Load a bundle: `url` is its directory (or its manifest.json). Options: precision
   * ("int8" | "fp32", default int8 as the Python runtime), verifyChecksums (default true),
   * onProgress(message), graphs (the graphs to create sessions for, default all: a decoder
   * worker loads only mimi_decoder), device ("wasm", or "webgpu" falling back to wasm),
   * fastKv (default true: use the bundle's flow_lm_step graph when it has one for this
   * precision; false keeps the contract graph flow_lm_main), kvSlack (spare K/V rows when the
   * fast-KV buffers grow, default 32; 0 doubles them), spinning (default true: ONNX Runtime's
   * idle threads spin; false frees the core for another worker).
   */
  static async load(
    url,
    { precision = "int8", verifyChecksums = true, onProgress = () => {}, graphs = GRAPH_NAMES,
      device = "wasm", fastKv = true, kvSlack = KV_SLACK, spinning = true } = {},
  ) {
    if (!["int8", "fp32"].includes(precision)) {
      throw new InvalidInputError(`precision must be int8 or fp32, got ${JSON.stringify(precision)}`);
    }
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
    const tts = new PocketTTS(manifest, sessions, tokenizer, precision);
    tts._base = base;
    tts.kvSlack = kvSlack;
    tts._verify = verifyChecksums;
    return tts;
  }

  constructor(manifest, sessions, tokenizer, precision) {
    this.manifest = manifest;
    this.precision = precision;
    this.tokenizer = tokenizer;
    this.rules = textRules(manifest.text);
    const unknown = Object.keys(manifest.text).filter((k) => !TEXT_RULE_KEYS.includes(k));
    if (unknown.length) {
      throw new BundleError(
        `unknown text rule(s) ${unknown.join(", ")} in the bundle: it may come from a newer exporter`,
      );
    }
    this._sessions = sessions;
    this._specs = manifest.graphs;
    /** The execution provider each session got: {name: "wasm" | "webgpu"}. */
    this.devices = Object.fromEntries(
      Object.entries(sessions).map(([name, session]) => [name, session.device ?? "wasm"]),
    );
    /** Time spent in each graph: {name: {calls, ms}} (reset it to measure a run). */
    this.profile = {};
    for (const name of Object.keys(sessions)) {
      const spec = this._specs[name];
      const want = [...spec.inputs, ...(spec.states ?? []), ...(spec.buffers ?? [])]
        .map((t) => t.name)
        .sort();
      const have = [...sessions[name].inputNames].sort();
      if (want.join() !== have.join()) {
        throw new BundleError(`graph ${name}: inputs ${have} do not match the manifest's ${want}`);
      }
    }
    // Voices are checked against the FP32 flow_lm_main digest, which schema 3 records (an
    // INT8-only bundle has no such file).
    const main = manifest.graphs.flow_lm_main;
    this.modelId = manifest.model_id || main.sha256[main.files.fp32];
    /** True when the flow LM runs on flow_lm_step (new K/V rows only) instead of the
     * contract graph flow_lm_main (whole cache in and out every step). */
    this.fastKv = "flow_lm_step" in sessions;
    this.kvSlack = KV_SLACK;
    // flow_lm_step's outputs without `queries`: fetched when timestamps are off.
    const stepOutputs = sessions.flow_lm_step?.outputNames ?? [];
    this._hasQueries = stepOutputs.includes("queries");
    this._plainOutputs = stepOutputs.filter((n) => n !== "queries");
  }

  /** Why `timestamps: true` cannot be given by this engine, or null when it can. */
  get timestampsUnavailable() {
    if (!this.manifest.timestamps?.heads?.length) return NO_HEADS;
    if (!this.fastKv || !this._hasQueries) {
      return "timestamps: word timestamps need the bundle's flow_lm_step graph with its " +
        "queries output; load with fastKv: true (re-export the bundle if it has none, or " +
        "without --kv-dtype fp16: this runtime reads float32 K/V only)";
    }
    if (this.tokenizer) {
      try {
        this.tokenizer.pieceSpans("a");
      } catch (e) {
        return e.message;
      }
    }
    return null;
  }

  /** Names of the bundle's predefined voices (manifest.voices). */
  get voices() {
    return Object.keys(this.manifest.voices ?? {});
  }

  /** The voice the bundle names as its default (upstream's for the language), or null. */
  get defaultVoice() {
    return this.manifest.default_voice ?? null;
  }

  /** Load a predefined voice of the bundle by name (checked against its sha256). */
  async namedVoice(name) {
    const entry = (this.manifest.voices ?? {})[name];
    if (!entry || !Object.hasOwn(this.manifest.voices, name)) {
      const known = this.voices.join(", ") || "none";
      throw new VoiceError(`no voice ${JSON.stringify(name)} in this bundle (voices: ${known})`);
    }
    if (!this._base) throw new VoiceError("named voices need a bundle loaded with PocketTTS.load");
    const bytes = await fetchChecked(this._base, entry.file, entry.sha256, `voice ${name}`,
      this._verify);
    return this.loadVoice(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  }

  async _run(name, feeds, fetches = undefined) {
    const start = performance.now();
    const session = this._sessions[name];
    const out = await (fetches ? session.run(feeds, fetches) : session.run(feeds));
    const p = (this.profile[name] ??= { calls: 0, ms: 0 });
    p.calls++;
    p.ms += performance.now() - start;
    return out;
  }

  /** A fresh streaming decoder for one text chunk (needs the mimi_decoder session). */
  newDecoder() {
    return new Decoder(this.manifest, (feeds) => this._run("mimi_decoder", feeds));
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
    return zeroStates(this._specs.flow_lm_main.states);
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
    const { latents } = await this._run("mimi_encoder", {
      audio: new ort.Tensor("float32", mono, [1, 1, mono.length]),
    });
    const lm = this._begin(this.emptyState());
    await this._flowLm(lm, this._emptySequence(), latents);
    return { states: this._statesOf(lm), modelId: this.modelId };
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
      if (got.dtype === "float32" && !got.data.every(Number.isFinite)) {
        throw new VoiceError(`voice state ${spec.name} holds NaN or Inf: the voice file is broken`);
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

  /** Synthesize the whole text; returns mono float32 samples at `sampleRate` (with
   * `timestamps: true`: {audio, words}, the finished word events in order). */
  async generate(text, voice = null, params = {}) {
    const pieces = [];
    const words = [];
    for await (const chunk of this.stream(text, voice, params)) {
      pieces.push(chunk.samples);
      words.push(...chunk.words.filter((w) => w.end !== null));
    }
    const out = new Float32Array(pieces.reduce((n, p) => n + p.length, 0));
    let offset = 0;
    for (const p of pieces) {
      out.set(p, offset);
      offset += p.length;
    }
    return params?.timestamps ? { audio: out, words } : out;
  }

  /**
   * Yield audio as it is made: {samples, sampleRate, textChunk, textChunkIndex, words}.
   * Parameters (null/undefined take the manifest's defaults): temperature, lsdSteps,
   * eosThreshold, framesAfterEos, noiseClamp, seed, maxFrames (replaces the per-chunk length
   * estimate), firstChunkFrames (latents decoded for the first audio of each text chunk,
   * default 1), decodeFrames (latents per later decoder call, default and at most
   * max_decode_frames), timestamps (true: `words` holds the word events decided up to this
   * audio, see timestamps.js; a text chunk's last word may end in a zero-sample chunk).
   */
  async *stream(text, voice = null, params = {}) {
    const p = this._params(params);
    const timeline = p.timestamps ? new WordTimeline(this.sampleRate) : null;
    let decoder = null;
    let block = [];
    let scores = [];
    let need = p.firstChunkFrames;
    let current = null;
    const emit = async () => {
      const samples = await decoder.decode(block);
      const words = timeline ? timeline.frames(samples, scores) : [];
      block = [];
      scores = [];
      need = p.decodeFrames;
      return { samples, sampleRate: this.sampleRate, ...current, words };
    };
    for await (const event of this._latents(text, voice, p)) {
      if (event.latent === null) {
        if (block.length) yield await emit();
        const words = timeline ? timeline.endChunk() : [];
        if (words.length) {
          yield { samples: new Float32Array(0), sampleRate: this.sampleRate, ...current, words };
        }
        continue;
      }
      if (event.first) {
        decoder = this.newDecoder();
        need = p.firstChunkFrames;
        current = { textChunk: event.textChunk, textChunkIndex: event.textChunkIndex };
        timeline?.beginChunk(event.units);
      }
      block.push(event.latent);
      scores.push(event.scores);
      if (block.length >= need) yield await emit();
    }
  }

  /**
   * The latents of a synthesis, for a decoder elsewhere (another worker): yields
   * {textChunkIndex, textChunk, first, latent, scores}, where `first` marks a text chunk's
   * first latent (start a fresh decoder) and latent === null ends a text chunk (flush). With
   * timestamps, `scores` is the latent's attention per word unit and a first latent carries
   * the chunk's `units` (for a WordTimeline where it is decoded). Parameters as stream().
   */
  latents(text, voice = null, params = {}) {
    return this._latents(text, voice, this._params(params));
  }

  async *_latents(text, voice, p) {
    const chunks = this.textChunks(text);
    if (voice !== null && !(voice && voice.states)) {
      throw new VoiceError("voice must come from voiceFromAudio(), loadVoice() or namedVoice()");
    }
    const start = voice ? voice.states : this.emptyState();
    const rng = createRng(p.seed);
    const units = p.timestamps ? mapChunks(text, chunks.map((c) => c.text), this.tokenizer) : null;
    for (const [index, chunk] of chunks.entries()) {
      const info = { textChunkIndex: index, textChunk: chunk.text };
      let first = true;
      const chunkUnits = units?.[index] ?? null;
      const latents = this._chunkLatents(chunk, start, p, rng, chunkUnits);
      for await (const { latent, scores } of latents) {
        const event = { ...info, first, latent, scores };
        yield first && chunkUnits ? { ...event, units: chunkUnits } : event;
        first = false;
      }
      yield { ...info, first: false, latent: null, scores: null };
    }
  }

  // Generation parameters by their camelCase names, checked against the one parameter list
  // (parameters.js, generated from Python's GenerationConfig): same defaults, same limits.
  _params({ decodeFrames = null, ...given } = {}) {
    const d = this.manifest.defaults;
    const known = new Set(PARAMETERS.map((q) => q.js));
    const unknown = Object.keys(given).filter((k) => !known.has(k));
    if (unknown.length) throw new InvalidInputError(`unknown generation parameter(s) ${unknown}`);
    const p = { decodeFrames: decodeFrames ?? maxDecodeFrames(this.manifest) };
    for (const q of PARAMETERS) {
      const value = given[q.js] ?? (q.manifestDefault ? d[q.manifestDefault] : q.default);
      p[q.js] = value;
      if (value === null && q.optional) continue;
      if (q.kind === "bool") {
        if (typeof value !== "boolean") {
          throw new InvalidInputError(`${q.js} must be true or false, got ${value}`);
        }
        continue;
      }
      const number = typeof value === "number" && !Number.isNaN(value);
      let ok = number && (q.kind === "float" || Number.isInteger(value));
      if (ok && q.minimum !== null) ok = q.aboveMinimum ? value > q.minimum : value >= q.minimum;
      if (ok && q.maximum !== null) ok = value <= q.maximum;
      if (!ok) {
        const what = q.kind === "int" ? "an integer" : "a number";
        const bounds = [
          q.minimum !== null ? `${q.aboveMinimum ? ">" : ">="} ${q.minimum}` : null,
          q.maximum !== null ? `<= ${q.maximum}` : null,
        ].filter(Boolean);
        const range = bounds.length ? ` ${bounds.join(" and ")}` : "";
        throw new InvalidInputError(
          `${q.js} must be ${what}${range}${q.optional ? " or null" : ""}, got ${value}`,
        );
      }
    }
    const unavailable = p.timestamps ? this.timestampsUnavailable : null;
    if (unavailable) throw new TimestampsUnavailableError(unavailable);
    // More latents than max_decode_frames are decoded in several calls of at most that many.
    if (!Number.isInteger(p.decodeFrames) || p.decodeFrames < 1 || p.decodeFrames > 1000) {
      throw new InvalidInputError(`decodeFrames must be an integer in 1..1000, got ${p.decodeFrames}`);
    }
    return p;
  }

  // Upstream's loop for one text chunk: yields {latent (Float32Array of latent_dim), scores
  // (its attention per word unit of `units`, or null without units)}.
  async *_chunkLatents(chunk, startState, p, rng, units = null) {
    const m = this.manifest;
    const d = m.defaults;
    const after = p.framesAfterEos ?? chunk.framesAfterEosGuess + d.frames_after_eos_guess_offset;
    const maxLen =
      p.maxFrames ??
      estimateMaxFrames(chunk.tokenIds.length, m.frame_rate, d.max_length_tokens_per_second,
        d.max_length_padding_seconds);
    const ids = BigInt64Array.from(chunk.tokenIds, (i) => BigInt(i));
    const { embeddings } = await this._run("text_conditioner", {
      token_ids: new ort.Tensor("int64", ids, [1, ids.length]),
    });
    const lm = this._begin(startState); // a fresh copy of the voice state per text chunk
    const textStart = lm.position;
    await this._flowLm(lm, this._emptySequence(), embeddings);
    const timing = units ? new TextTiming(units, m.timestamps.heads, textStart, lm.position) : null;
    const L = m.latent_dim;
    let sequence = new ort.Tensor("float32", new Float32Array(L).fill(NaN), [1, 1, L]);
    const noText = new ort.Tensor("float32", new Float32Array(0), [1, 0, m.d_model]);
    let eosStep = null;
    for (let step = 0; step < maxLen; step++) {
      const out = await this._flowLm(lm, sequence, noText, timing !== null);
      if (out.eosLogit > p.eosThreshold && eosStep === null && step >= d.min_frames_before_eos) {
        eosStep = step;
      }
      if (eosStep !== null && step >= eosStep + after) return;
      const scores = timing
        ? timing.scores(out.queries.data, out.queries.dims, (layer) => lm.keys(layer))
        : null;
      const latent = await this._sample(out.conditioning, p, rng);
      yield { latent, scores };
      sequence = new ort.Tensor("float32", latent, [1, 1, L]);
    }
  }

  // A flow-LM stream starting from contract-layout states: {states} for flow_lm_main, or
  // a KVCache (preallocated buffers and a position counter) for flow_lm_step.
  _begin(states) {
    if (!this.fastKv) return { states };
    return KVCache.fromStates(this._specs.flow_lm_step.buffers, this._specs.flow_lm_main.states,
      states, this.kvSlack);
  }

  _statesOf(lm) {
    return this.fastKv ? lm.toStates(this._specs.flow_lm_main.states) : lm.states;
  }

  // One flow-LM call; advances `lm` in place. `queries`: also fetch the step's post-RoPE
  // queries (word timestamps); otherwise that output is not copied out at all.
  async _flowLm(lm, sequence, textEmbeddings, queries = false) {
    if (this.fastKv) {
      // Buffers first: an input name can never be shadowed.
      const feeds = { ...lm.feeds(), sequence, text_embeddings: textEmbeddings };
      const fetches = queries || !this._hasQueries ? undefined : this._plainOutputs;
      const out = await this._run("flow_lm_step", feeds, fetches);
      lm.append(out);
      return {
        conditioning: out.conditioning,
        eosLogit: out.eos_logit.data[0],
        queries: out.queries ?? null,
      };
    }
    // States first: an input name can never be shadowed by a state.
    const out = await this._run("flow_lm_main", {
      ...lm.states,
      sequence,
      text_embeddings: textEmbeddings,
    });
    const next = {};
    for (const s of this._specs.flow_lm_main.states) next[s.name] = out[`out_${s.name}`];
    lm.states = next;
    return { conditioning: out.conditioning, eosLogit: out.eos_logit.data[0] };
  }

  _emptySequence() {
    return new ort.Tensor("float32", new Float32Array(0), [1, 0, this.manifest.latent_dim]);
  }

  // Noise, then the flow head's decode rule (sampling.js). A non-finite latent (a huge
  // temperature) is an error, never silent NaN audio.
  async _sample(conditioning, p, rng) {
    const m = this.manifest;
    const noise = drawNoise(rng, m.latent_dim, p.temperature, p.noiseClamp);
    if (!noise.every(Number.isFinite)) {
      throw new InvalidInputError(
        `temperature ${p.temperature} makes the noise overflow float32: lower the temperature`,
      );
    }
    const latent = await solveFlow((feeds) => this._run("flow_lm_flow", feeds), m.flow_type,
      conditioning, noise, p.lsdSteps);
    if (!latent.every(Number.isFinite)) {
      throw new InvalidInputError(
        "the model produced a non-finite latent (NaN/Inf): check the voice and the temperature",
      );
    }
    return latent;
  }
}
