// Make a tokenizers.js Tokenizer give the ids of Python `tokenizers` (the Rust crate) for
// tokenizer.json files converted from SentencePiece unigram models. tokenizers.js
// approximates three steps there; each is replaced on the loaded instance by the Rust rule:
// - Precompiled normalizer: the real charsmap (precompiled.js) instead of NFKC and a
//   hand-written character list;
// - Strip normalizer: Unicode White_Space (JS trim also strips U+FEFF, keeps U+0085);
// - Metaspace pre-tokenizer: `split` (on U+2581, each piece keeping the U+2581 before it);
// - Unigram model: Viterbi over the vocabulary's own scores (ties: the piece that starts
//   first), unknown characters scored min(score) - 10 and consecutive ones fused into one
//   unknown token, then byte fallback (<0xNN> pieces) where the model has it.

import { PrecompiledCharsmap } from "./precompiled.js";

const UNK_PENALTY = 10;
const utf8 = new TextEncoder();

function patchNormalizer(instance, config) {
  if (!instance || !config) return;
  if (config.type === "Sequence") {
    config.normalizers.forEach((c, i) => patchNormalizer(instance.normalizers[i], c));
  } else if (config.type === "Precompiled" && config.precompiled_charsmap) {
    const charsmap = PrecompiledCharsmap.fromBase64(config.precompiled_charsmap);
    instance.normalize = (text) => charsmap.normalize(text);
  } else if (config.type === "Strip") {
    const left = config.strip_left ? /^\p{White_Space}+/u : null;
    const right = config.strip_right ? /\p{White_Space}+$/u : null;
    instance.normalize = (text) => {
      if (left) text = text.replace(left, "");
      if (right) text = text.replace(right, "");
      return text;
    };
  }
}

function patchPreTokenizer(instance, config) {
  if (!instance || !config) return;
  if (config.type === "Sequence") {
    config.pretokenizers.forEach((c, i) => patchPreTokenizer(instance.tokenizers[i], c));
  } else if (config.type === "Metaspace") {
    const replacement = config.replacement ?? "\u2581";
    const scheme = config.prepend_scheme ?? "always";
    const split = config.split ?? true;
    instance.pre_tokenize_text = (text, options) => {
      let s = text.replaceAll(" ", replacement);
      const first = (options?.section_index ?? 0) === 0;
      if (!s.startsWith(replacement) && (scheme === "always" || (scheme === "first" && first))) {
        s = replacement + s;
      }
      if (!split) return [s];
      const parts = [];
      let current = "";
      for (const c of s) {
        if (c === replacement && current) {
          parts.push(current);
          current = "";
        }
        current += c;
      }
      if (current) parts.push(current);
      return parts;
    };
  }
}

export class UnigramExact {
  constructor(config) {
    this.pieces = config.vocab.map(([piece]) => piece);
    this.scores = config.vocab.map(([, score]) => score);
    this.ids = new Map();
    this.pieces.forEach((p, i) => {
      if (!this.ids.has(p)) this.ids.set(p, i);
    });
    this.unkId = config.unk_id ?? null;
    this.byteFallback = Boolean(config.byte_fallback);
    this.unkScore = this.scores.reduce((a, b) => Math.min(a, b), Infinity) - UNK_PENALTY;
    this.trie = { next: new Map(), id: -1 };
    for (const [piece, id] of this.ids) {
      let node = this.trie;
      for (const c of piece) {
        if (!node.next.has(c)) node.next.set(c, { next: new Map(), id: -1 });
        node = node.next.get(c);
      }
      node.id = id;
    }
  }

  // Best segmentation of one pre-token's characters: [[begin, end, id or -1 for unknown]].
  _viterbi(chars) {
    const n = chars.length;
    const score = new Float64Array(n + 1).fill(-Infinity);
    const from = new Int32Array(n + 1).fill(-1);
    const ids = new Int32Array(n + 1);
    score[0] = 0;
    const offer = (begin, end, s, id) => {
      // Nodes ending at `end` are offered in order of their start: the first best one wins.
      if (from[end] < 0 || s > score[end]) {
        score[end] = s;
        from[end] = begin;
        ids[end] = id;
      }
    };
    for (let begin = 0; begin < n; begin++) {
      let single = false;
      let node = this.trie;
      for (let end = begin; end < n && (node = node.next.get(chars[end])); end++) {
        if (node.id >= 0) {
          offer(begin, end + 1, score[begin] + this.scores[node.id], node.id);
          if (end === begin) single = true;
        }
      }
      if (!single) offer(begin, begin + 1, score[begin] + this.unkScore, -1);
    }
    const out = [];
    for (let end = n; end > 0; end = from[end]) out.push([from[end], end, ids[end]]);
    return out.reverse();
  }

  /** The tokens of one pre-token: [piece, begin, end] in its characters; the byte pieces
   * of an unknown run all span the run, as the crate reports their offsets. */
  tokenize(token) {
    const chars = Array.from(token);
    const fused = [];
    let unknown = null; // [begin, end] of the current run of unknown characters
    for (const [begin, end, id] of this._viterbi(chars)) {
      if (id < 0 || id === this.unkId) {
        unknown = unknown ? [unknown[0], end] : [begin, end];
        continue;
      }
      if (unknown) fused.push(unknown);
      unknown = null;
      fused.push([begin, end]);
    }
    if (unknown) fused.push(unknown);
    const result = [];
    for (const [begin, end] of fused) {
      const piece = chars.slice(begin, end).join("");
      if (this.ids.has(piece) || !this.byteFallback) {
        result.push([piece, begin, end]); // unknown strings map to the unknown id
        continue;
      }
      const bytes = Array.from(utf8.encode(piece), (b) =>
        `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
      if (bytes.every((b) => this.ids.has(b))) result.push(...bytes.map((b) => [b, begin, end]));
      else result.push([piece, begin, end]);
    }
    return result;
  }

  encode(tokens) {
    return tokens.flatMap((token) => this.tokenize(token).map(([piece]) => piece));
  }
}

/** Patch `tokenizer` (a tokenizers.js Tokenizer built from `json`) in place. */
export function makeExact(tokenizer, json) {
  patchNormalizer(tokenizer.normalizer, json.normalizer);
  patchPreTokenizer(tokenizer.pre_tokenizer, json.pre_tokenizer);
  if (json.model?.type === "Unigram") {
    const exact = new UnigramExact(json.model);
    tokenizer.model.encode = (tokens) => exact.encode(tokens);
    tokenizer.model.fuse_unk = false; // done above, the Rust way
    tokenizer.unigramExact = exact; // token spans use it (hf-spans.js)
  }
  return tokenizer;
}
