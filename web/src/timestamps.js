// Word timestamps from the flow LM's own attention: a mirror of
// src/pocket_tts_onnx/runtime/timestamps.py (the rule of pocket-tts-timestamped 1.4.0).
//
// At each flow-LM step, the calibrated heads' post-RoPE query of the new position (the
// `queries` output of flow_lm_step) is scored against the keys of the chunk's text positions
// (softmax over the text tokens), spread onto the chunk's units (word-units.js) and averaged
// over the heads. WordAligner then decides per decoded frame (80 ms) from those scores and
// from whether the frame is voiced: a voiced frame opens the next word when none is open, and
// moves on when a later word gets more attention than the open one; a silent frame closes the
// open word when a later unit dominates, or when it is the last word and only appended
// punctuation follows. The engine scores (TextTiming), whoever decodes aligns (WordTimeline).
//
// A word event is {text, index, charStart, charEnd, start, end}: `text` is
// `source.slice(charStart, charEnd)`, the `index`-th word; `start` (seconds from the stream's
// start) is when it begins; `end` is null in the event sent when the word starts, and set in
// the one sent when it ends (Python's WordEvent, offsets as JS string indices).

import { InvalidInputError } from "./text.js";

// A frame is silent when its RMS is at most this (float32 1e-3, as the fork).
const SILENCE_RMS = Math.fround(1e-3);
// Below this attention the open word no longer holds against any later word.
const WEAK_ATTENTION = 0.001;

/** Word timestamps were asked for and this bundle or runtime cannot give them. */
export class TimestampsUnavailableError extends InvalidInputError {
  constructor(message) {
    super(message);
    this.name = "TimestampsUnavailableError";
    this.param = "timestamps";
  }
}

export const NO_HEADS =
  "timestamps: this bundle has no word-timestamp heads; re-export it with " +
  "`pocket-tts-onnx export --timestamp-heads L3H8,L2H0` (heads of your model)";

export function isVoiced(samples) {
  if (!samples.length) return false;
  let energy = 0;
  for (const x of samples) energy += x * x;
  return energy > SILENCE_RMS * SILENCE_RMS * samples.length;
}

/** One chunk's text positions [start, end) in its K/V cache and how to score them. */
export class TextTiming {
  /** `units`: the chunk's (mapChunks); `heads`: [[layer, head], ...] (manifest.timestamps). */
  constructor(units, heads, start, end) {
    if (units.tokens !== end - start) {
      throw new Error("word timestamps: the token offsets disagree with the ids");
    }
    this.units = units;
    this.heads = heads;
    this.start = start;
    this.end = end;
  }

  /**
   * Per-unit attention (Float32Array [units]) from one row's `queries` (data of [1, L, H, d])
   * and `keys(layer)` -> {data, heads, capacity}: the K buffer [H_kv, capacity, d] of a layer.
   */
  scores(queries, [, , H, d], keys) {
    const U = this.units.units.length;
    const T = this.end - this.start;
    const matrix = this.units.tokenToUnit;
    const total = new Float64Array(U);
    const scale = Math.sqrt(d);
    const weights = new Float64Array(T);
    for (const [layer, head] of this.heads) {
      const k = keys(layer);
      const kvHead = Math.floor(head / (H / k.heads));
      const q = queries.subarray((layer * H + head) * d, (layer * H + head + 1) * d);
      let max = -Infinity;
      for (let t = 0; t < T; t++) {
        const row = (kvHead * k.capacity + this.start + t) * d;
        let dot = 0;
        for (let i = 0; i < d; i++) dot += q[i] * k.data[row + i];
        weights[t] = dot / scale;
        max = Math.max(max, weights[t]);
      }
      let sum = 0;
      for (let t = 0; t < T; t++) sum += (weights[t] = Math.exp(weights[t] - max));
      for (let t = 0; t < T; t++) {
        const w = weights[t] / sum;
        for (let u = 0; u < U; u++) total[u] += w * matrix[t * U + u];
      }
    }
    return Float32Array.from(total, (x) => x / this.heads.length);
  }
}

/** The per-frame start/end decisions for one chunk. */
export class WordAligner {
  /** `units`: the chunk's units ({units: [{word, synthetic}]}, from mapChunks). */
  constructor(units) {
    this.units = units.units;
    this.words = this.units.flatMap((u, i) => (u.word ? [i] : [])); // unit index of each word
    this.next = 0; // position in `words` of the next word to open
    this.open = null;
    this.openStart = 0;
  }

  _event(position, start, end = null) {
    const w = this.units[this.words[position]].word;
    return { text: w.text, index: w.index, charStart: w.begin, charEnd: w.end, start, end };
  }

  _open(t) {
    this.open = this.next;
    this.openStart = t;
    this.next += 1;
    return this._event(this.open, t);
  }

  _close(t) {
    const event = this._event(this.open, this.openStart, t);
    this.open = null;
    return event;
  }

  _laterWordLeads(scores, current) {
    const held = scores[current];
    if (scores[this.words[this.next]] > held) return true;
    if (held >= WEAK_ATTENTION) return false;
    return this.words.slice(this.next + 1).some((u) => scores[u] > held);
  }

  /** Events of the frame starting at `t` seconds. */
  frame(scores, voiced, t) {
    if (!voiced) {
      if (this.open === null) return [];
      const current = this.words[this.open];
      let later = -Infinity;
      for (let u = current + 1; u < scores.length; u++) later = Math.max(later, scores[u]);
      const leads = later > scores[current];
      const last = this.open === this.words.length - 1;
      const marksFollow = this.units.slice(current + 1).some((u) => !u.word && !u.synthetic);
      return leads || (last && !marksFollow) ? [this._close(t)] : [];
    }
    if (this.open === null) return this.next < this.words.length ? [this._open(t)] : [];
    if (this.next >= this.words.length) return [];
    if (this._laterWordLeads(scores, this.words[this.open])) return [this._close(t), this._open(t)];
    return [];
  }

  /** The chunk's audio ended at `t`: the open word ends there. */
  finish(t) {
    const events = this.open !== null ? [this._close(t)] : [];
    this.next = this.words.length;
    return events;
  }
}

/**
 * Word events of one stream, where its audio is decoded: the samples so far give each
 * frame's start. beginChunk(units) when a text chunk starts, frames(audio, scores) for each
 * decoded block (one score array per latent, in order), endChunk() after its last audio.
 */
export class WordTimeline {
  constructor(sampleRate) {
    this.sampleRate = sampleRate;
    this.samples = 0;
    this.aligner = null;
  }

  beginChunk(units) {
    this.aligner = units ? new WordAligner(units) : null;
  }

  frames(audio, scores) {
    const events = [];
    if (!scores.length) {
      this.samples += audio.length;
      return events;
    }
    const size = audio.length / scores.length;
    scores.forEach((s, i) => {
      const frame = audio.subarray(i * size, (i + 1) * size);
      if (this.aligner && s) {
        events.push(...this.aligner.frame(s, isVoiced(frame), this.samples / this.sampleRate));
      }
      this.samples += frame.length;
    });
    return events;
  }

  endChunk() {
    const events = this.aligner ? this.aligner.finish(this.samples / this.sampleRate) : [];
    this.aligner = null;
    return events;
  }
}
