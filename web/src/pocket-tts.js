// Pocket TTS on ONNX Runtime Web: the browser mirror of the Python engine
// (src/pocket_tts_onnx/runtime/engine.py).
//
// Per text chunk: copy of the voice state, text_conditioner -> flow LM with an empty
// sequence, then the autoregressive loop, the EOS rule and the flow head (flow-lm.js), and
// streaming Mimi decoding with a fresh decoder state and the manifest's fade-in per chunk
// (decoder.js). This file is the public API over them: loading (bundle.js), voices
// (voice.js), parameters (generation-params.js) and the streaming of audio chunks. With
// `timestamps: true` (a bundle with heads), each step's `queries` output is scored against
// the K/V buffers and the chunks carry word events (timestamps.js, word-units.js).

import * as ort from "onnxruntime-web/wasm";

import { prepareVoiceAudio, VoiceError } from "./audio.js";
import { BundleError, fetchChecked, GRAPH_NAMES, openBundle, zeroStates } from "./bundle.js";
import { Decoder } from "./decoder.js";
import { FlowLm } from "./flow-lm.js";
import { checkParams } from "./generation-params.js";
import { KV_SLACK } from "./kv-cache.js";
import { createRng } from "./rng.js";
import { InvalidInputError, textRules, textToChunkTokens } from "./text.js";
import { NO_HEADS, TimestampsUnavailableError, WordTimeline } from "./timestamps.js";
import { readVoice, VOICE_FORMAT } from "./voice.js";
import { mapChunks } from "./word-units.js";

export {
  ort,
  BundleError,
  Decoder,
  GRAPH_NAMES,
  InvalidInputError,
  TimestampsUnavailableError,
  VOICE_FORMAT,
  VoiceError,
};

const TEXT_RULE_KEYS = Object.keys(textRules());

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
    const { manifest, base, sessions, tokenizer } = await openBundle(url, {
      precision, verifyChecksums, onProgress, graphs, device, fastKv, spinning,
    });
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
    const stepOutputs = sessions.flow_lm_step?.outputNames ?? [];
    this._hasQueries = stepOutputs.includes("queries");
    // flow_lm_step's outputs without `queries`: fetched when timestamps are off.
    const plainOutputs = this._hasQueries ? stepOutputs.filter((n) => n !== "queries") : null;
    this._flow = new FlowLm(manifest, this._run.bind(this), this.fastKv, plainOutputs);
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
    const lm = this._flow.begin(this.emptyState(), this.kvSlack);
    await this._flow.prompt(lm, latents);
    return { states: this._flow.statesOf(lm), modelId: this.modelId };
  }

  /** Load a voice .npz written by `pocket-tts-onnx voice` / Voice.save. */
  async loadVoice(buffer, { checkModel = true } = {}) {
    return readVoice(buffer, this._specs.flow_lm_main.states, this.modelId, checkModel);
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
      const lm = this._flow.begin(start, this.kvSlack); // a fresh copy of the voice state
      const latents = this._flow.chunkLatents(chunk, lm, p, rng, chunkUnits);
      for await (const { latent, scores } of latents) {
        const event = { ...info, first, latent, scores };
        yield first && chunkUnits ? { ...event, units: chunkUnits } : event;
        first = false;
      }
      yield { ...info, first: false, latent: null, scores: null };
    }
  }

  // Generation parameters, checked as Python's GenerationConfig checks them.
  _params(given = {}) {
    return checkParams(given, this.manifest, () => this.timestampsUnavailable);
  }
}
