// The flow LM's keys and values for the fast-KV graph flow_lm_step (docs/state-design.md):
// one preallocated buffer [1, H_kv, capacity, d] per layer, read by the graph, which returns
// only the new rows; they are written here at `position`, so the graph never concatenates the
// cache. When full, the capacity grows to what is needed plus `slack` rows (slack 0: doubles).
// A tight capacity matters in WebAssembly: every call copies the whole buffer into the wasm
// heap and the graph's cost grows with it (step at KV 300: 40 ms at capacity 308, 44 ms at
// 600, 60 ms at 1200), while growing re-copies the cache only once per `slack` steps.

export const KV_SLACK = 32;

import * as ort from "onnxruntime-web/wasm";

const OFFSET = "offset"; // upstream_key of the contract graph's position counter

export class KVCache {
  /** `buffers`: the step graph's buffer specs ({name, output_name, state, shape, ...}). */
  constructor(buffers, capacity = KV_SLACK, slack = KV_SLACK) {
    this.specs = buffers;
    this.slack = slack;
    this.position = 0;
    this.capacity = Math.max(1, capacity);
    this.arrays = {};
    for (const b of buffers) this.arrays[b.name] = new Float32Array(this._size(b, this.capacity));
  }

  _size(b, capacity) {
    return b.shape[1] * capacity * b.shape[3];
  }

  /** A cache holding contract-layout states (a voice: K/V [1, H, P, d] and the counter). */
  static fromStates(buffers, stateSpecs, states, slack = KV_SLACK) {
    const counter = stateSpecs.find((s) => s.upstream_key === OFFSET);
    const first = states[buffers[0].state];
    const rows = first.dims[2];
    // The real rows are the last `position` ones: a junk prefix is allowed by the design.
    const position = counter ? Number(states[counter.name].data[0]) : rows;
    const cache = new KVCache(buffers, slack ? position + slack : Math.max(64, position * 2), slack);
    for (const b of buffers) {
      const src = states[b.state];
      const [, heads, kvLen, d] = src.dims;
      const dst = cache.arrays[b.name];
      for (let h = 0; h < heads; h++) {
        const from = (h * kvLen + (kvLen - position)) * d;
        dst.set(src.data.subarray(from, from + position * d), h * cache.capacity * d);
      }
    }
    cache.position = position;
    return cache;
  }

  /** Contract-layout states for these rows (what a voice file holds). */
  toStates(stateSpecs) {
    const states = {};
    for (const spec of stateSpecs) {
      if (spec.upstream_key === OFFSET) {
        states[spec.name] = new ort.Tensor("int64", BigInt64Array.of(BigInt(this.position)), [1]);
      }
    }
    for (const b of this.specs) {
      const [, heads, , d] = b.shape;
      const out = new Float32Array(heads * this.position * d);
      const src = this.arrays[b.name];
      for (let h = 0; h < heads; h++) {
        const from = h * this.capacity * d;
        out.set(src.subarray(from, from + this.position * d), h * this.position * d);
      }
      states[b.state] = new ort.Tensor("float32", out, [1, heads, this.position, d]);
    }
    return states;
  }

  clone() {
    const copy = new KVCache(this.specs, this.capacity, this.slack);
    for (const b of this.specs) copy.arrays[b.name].set(this.arrays[b.name]);
    copy.position = this.position;
    return copy;
  }

  /** Graph inputs: the buffers (read only) and the position counter. */
  feeds() {
    const feeds = { position: new ort.Tensor("int64", BigInt64Array.of(BigInt(this.position)), [1]) };
    for (const b of this.specs) {
      feeds[b.name] = new ort.Tensor("float32", this.arrays[b.name],
        [1, b.shape[1], this.capacity, b.shape[3]]);
    }
    return feeds;
  }

  /** Layer `layer`'s key buffer ([H_kv, capacity, d], flat), for word-timestamp scores. */
  keys(layer) {
    const spec = this.specs.find((b) => b.name === `cache_k_${layer}`);
    if (!spec) throw new Error(`word timestamps: the flow LM has no K buffer cache_k_${layer}`);
    return { data: this.arrays[spec.name], heads: spec.shape[1], capacity: this.capacity };
  }

  /** Write a step's new rows (outputs [1, H, n, d]) at `position` and advance it. */
  append(outputs) {
    const n = outputs[this.specs[0].output_name].dims[2];
    if (this.position + n > this.capacity) this._grow(this.position + n);
    for (const b of this.specs) {
      const rows = outputs[b.output_name];
      const [, heads, , d] = rows.dims;
      const dst = this.arrays[b.name];
      for (let h = 0; h < heads; h++) {
        dst.set(rows.data.subarray(h * n * d, (h + 1) * n * d), (h * this.capacity + this.position) * d);
      }
    }
    this.position += n;
  }

  _grow(needed) {
    let capacity = this.capacity;
    if (this.slack) capacity = needed + this.slack;
    while (capacity < needed) capacity *= 2;
    for (const b of this.specs) {
      const [, heads, , d] = b.shape;
      const old = this.arrays[b.name];
      const grown = new Float32Array(this._size(b, capacity));
      for (let h = 0; h < heads; h++) {
        grown.set(old.subarray(h * this.capacity * d, (h * this.capacity + this.position) * d),
          h * capacity * d);
      }
      this.arrays[b.name] = grown;
    }
    this.capacity = capacity;
  }
}
