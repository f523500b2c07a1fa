// Streaming Mimi decoding of one text chunk: a fresh decoder state and a fade-in at its
// start, as upstream and the Python engine (runtime/engine.py _Decoder) do.

import * as ort from "onnxruntime-web/wasm";

import { fadeIn } from "./audio.js";
import { zeroStates } from "./bundle.js";

// Mimi decodes at most this many latents per call: the bound of the Python engine
// (MAX_DECODE_FRAMES in runtime/engine.py, a transient-memory bound), unless the manifest's
// defaults carry max_decode_frames.
export const MAX_DECODE_FRAMES = 4;

export const maxDecodeFrames = (manifest) =>
  manifest.defaults?.max_decode_frames ?? MAX_DECODE_FRAMES;

export class Decoder {
  /** `run(feeds)` runs mimi_decoder (a session's run, or a profiled wrapper). */
  constructor(manifest, run) {
    this._manifest = manifest;
    this._run = run;
    this._specs = manifest.graphs.mimi_decoder.states;
    this._states = zeroStates(this._specs);
    this._first = true;
    this._max = maxDecodeFrames(manifest);
  }

  /** Decode latents (Float32Arrays of latent_dim) to one Float32Array of samples. */
  async decode(latents) {
    const m = this._manifest;
    const L = m.latent_dim;
    const pieces = [];
    for (let start = 0; start < latents.length; start += this._max) {
      const part = latents.slice(start, start + this._max);
      const batch = new Float32Array(part.length * L);
      part.forEach((latent, i) => batch.set(latent, i * L));
      // States first: an input name can never be shadowed by a state.
      const out = await this._run({
        ...this._states,
        latent: new ort.Tensor("float32", batch, [1, part.length, L]),
      });
      for (const s of this._specs) this._states[s.name] = out[`out_${s.name}`];
      let audio = out.audio_frame.data;
      if (this._first) {
        audio = fadeIn(audio, m.sample_rate, m.defaults.fade_in_seconds ?? 0.005);
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
