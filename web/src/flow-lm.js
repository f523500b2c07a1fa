// The flow LM's side of generation: prompting it (with a voice's audio latents or a text
// chunk's embeddings), upstream's autoregressive loop for one text chunk from a NaN BOS
// latent with the EOS rule, and the flow head's sampling. It runs either on the contract
// graph flow_lm_main (the whole state in and out every step) or, with `fastKv`, on
// flow_lm_step, whose K/V cache stays in preallocated buffers (kv-cache.js). States loop back
// by the names the manifest gives, never by position.

import * as ort from "onnxruntime-web/wasm";

import { KVCache } from "./kv-cache.js";
import { drawNoise, solveFlow } from "./sampling.js";
import { estimateMaxFrames, InvalidInputError } from "./text.js";
import { TextTiming } from "./timestamps.js";

export class FlowLm {
  /**
   * `run(name, feeds, fetches)` calls a graph's session. `fastKv`: run on flow_lm_step.
   * `plainOutputs`: flow_lm_step's outputs without `queries`, fetched when no word timestamps
   * are asked for (null when the graph has no `queries` output).
   */
  constructor(manifest, run, fastKv, plainOutputs = null) {
    this.manifest = manifest;
    this._specs = manifest.graphs;
    this._run = run;
    this.fastKv = fastKv;
    this._plainOutputs = plainOutputs;
  }

  /** A flow-LM stream starting from contract-layout states: {states} for flow_lm_main, or
   * a KVCache (preallocated buffers and a position counter) for flow_lm_step. */
  begin(states, kvSlack) {
    if (!this.fastKv) return { states };
    return KVCache.fromStates(this._specs.flow_lm_step.buffers, this._specs.flow_lm_main.states,
      states, kvSlack);
  }

  /** The contract-layout states of a stream (what a voice stores). */
  statesOf(lm) {
    return this.fastKv ? lm.toStates(this._specs.flow_lm_main.states) : lm.states;
  }

  /** Feed a prompt (`embeddings` [1, T, d_model]: audio latents or text) to the stream. */
  prompt(lm, embeddings) {
    return this._step(lm, this._emptySequence(), embeddings);
  }

  /**
   * Upstream's loop for one text chunk on a fresh stream `lm` (a copy of the voice state):
   * yields {latent (Float32Array of latent_dim), scores (its attention per word unit of
   * `units`, or null without units)} until the EOS rule or the length limit ends the chunk.
   */
  async *chunkLatents(chunk, lm, p, rng, units = null) {
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
    const textStart = lm.position;
    await this.prompt(lm, embeddings);
    const timing = units ? new TextTiming(units, m.timestamps.heads, textStart, lm.position) : null;
    const L = m.latent_dim;
    let sequence = new ort.Tensor("float32", new Float32Array(L).fill(NaN), [1, 1, L]);
    const noText = new ort.Tensor("float32", new Float32Array(0), [1, 0, m.d_model]);
    let eosStep = null;
    for (let step = 0; step < maxLen; step++) {
      const out = await this._step(lm, sequence, noText, timing !== null);
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

  // One flow-LM call; advances `lm` in place. `queries`: also fetch the step's post-RoPE
  // queries (word timestamps); otherwise that output is not copied out at all.
  async _step(lm, sequence, textEmbeddings, queries = false) {
    if (this.fastKv) {
      // Buffers first: an input name can never be shadowed.
      const feeds = { ...lm.feeds(), sequence, text_embeddings: textEmbeddings };
      const fetches = queries || !this._plainOutputs ? undefined : this._plainOutputs;
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
