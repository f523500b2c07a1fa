// Where each token of a tokenizer.json comes from in the text: the character offsets Python
// `tokenizers` reports (Encoding.offsets), which word timestamps need. tokenizers.js keeps no
// offsets, so the pipelines hf-exact.js makes exact are run again here with alignments:
// Precompiled, Strip and Replace normalizers (in a Sequence), the Metaspace pre-tokenizer and
// the Unigram model. Each normalized character carries the [begin, end) of the original
// characters (code points) it comes from, updated by the crate's rule
// (NormalizedString::transform_range): a character that replaces one takes its alignment, an
// inserted one takes the alignment of the character before it. A token spans the first
// character's begin to the last character's end.

import { PrecompiledCharsmap } from "./precompiled.js";
import { wholeScalars } from "./token-spans.js";

const utf8 = new TextEncoder();
const WHITE_SPACE = /^\p{White_Space}$/u;

/** A tokenizer.json this module cannot locate tokens for (named in the message). */
export class SpansUnsupportedError extends Error {}

class Aligned {
  constructor(text) {
    this.chars = Array.from(text);
    this.align = this.chars.map((_, i) => [i, i + 1]);
  }

  // transform_range on characters [start, end): `dest` is [[char, change]], change 0 replaces
  // the next character, -n replaces it and removes n more, a positive change inserts.
  transform(start, end, dest, initialOffset = 0) {
    let consumed = initialOffset;
    const chars = [];
    const align = [];
    for (const [c, change] of dest) {
      const at = start + consumed;
      const inserted = change > 0;
      align.push(inserted ? (at < 1 ? [0, 0] : this.align[at - 1]) : this.align[at]);
      chars.push(c);
      if (!inserted) consumed += 1 - change;
    }
    this.chars.splice(start, end - start, ...chars);
    this.align.splice(start, end - start, ...align);
  }
}

// The crate's Precompiled: graphemes under 6 bytes replaced whole, else character by
// character; each replacement's characters replace, then insert (or remove) the difference.
function precompiled(config) {
  const charsmap = PrecompiledCharsmap.fromBase64(config.precompiled_charsmap);
  const replace = (out, old, norm) => {
    const chars = Array.from(norm);
    const diff = chars.length - Array.from(old).length;
    for (const c of chars) out.push([c, 0]);
    if (diff > 0) for (let k = 1; k <= diff; k++) out[out.length - k][1] = 1;
    else if (diff < 0 && out.length) out[out.length - 1][1] += diff;
  };
  return (s) => {
    const out = [];
    let modified = false;
    for (const { segment } of charsmap.segmenter.segment(s.chars.join(""))) {
      if (utf8.encode(segment).length < 6) {
        const whole = charsmap.transform(segment);
        if (whole !== null) {
          replace(out, segment, whole);
          modified = true;
          continue;
        }
      }
      for (const c of segment) {
        const norm = charsmap.transform(c);
        if (norm === null) {
          out.push([c, 0]);
        } else {
          replace(out, c, norm);
          modified = true;
        }
      }
    }
    if (modified) s.transform(0, s.chars.length, out);
  };
}

// Kept characters keep their own alignment.
const strip = (config) => (s) => {
  let begin = 0;
  let end = s.chars.length;
  if (config.strip_left) while (begin < end && WHITE_SPACE.test(s.chars[begin])) begin++;
  if (config.strip_right) while (end > begin && WHITE_SPACE.test(s.chars[end - 1])) end--;
  s.chars = s.chars.slice(begin, end);
  s.align = s.align.slice(begin, end);
};

// Each match is removed and the content inserted after it (aligned with its last character).
function replace(config) {
  const { String: literal, Regex: regex } = config.pattern ?? {};
  if (literal === undefined && regex === undefined) {
    throw new SpansUnsupportedError("a Replace normalizer without a pattern");
  }
  const source = literal !== undefined ? literal.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") : regex;
  const pattern = new RegExp(source, "gu");
  const content = Array.from(config.content);
  return (s) => {
    const text = s.chars.join("");
    let shift = 0;
    for (const match of text.matchAll(pattern)) {
      if (!match[0]) continue;
      const start = Array.from(text.slice(0, match.index)).length + shift;
      const length = Array.from(match[0]).length;
      s.transform(start, start + length, content.map((c) => [c, 1]), length);
      shift += content.length - length;
    }
  };
}

function normalizerSteps(config) {
  if (!config) return [];
  switch (config.type) {
    case "Sequence":
      return config.normalizers.flatMap(normalizerSteps);
    case "Precompiled":
      return config.precompiled_charsmap ? [precompiled(config)] : [];
    case "Strip":
      return [strip(config)];
    case "Replace":
      return [replace(config)];
    default:
      throw new SpansUnsupportedError(`the ${config.type} normalizer`);
  }
}

// Metaspace: spaces become the replacement, which is prepended (aligned with the first
// character) and starts each pre-token. Returns the pre-tokens' [start, end) in `s`.
function metaspace(config) {
  if (!config) return (s) => [[0, s.chars.length]];
  if (config.type !== "Metaspace") {
    throw new SpansUnsupportedError(`the ${config.type} pre-tokenizer`);
  }
  const mark = config.replacement ?? "\u2581";
  const scheme = config.prepend_scheme ?? "always";
  const split = config.split ?? true;
  return (s) => {
    s.chars = s.chars.map((c) => (c === " " ? mark : c));
    if (s.chars.length && s.chars[0] !== mark && scheme !== "never") {
      s.transform(0, 1, [[mark, 0], [s.chars[0], 1]]);
    }
    const n = s.chars.length;
    if (!split) return n ? [[0, n]] : [];
    const pieces = [];
    let start = 0;
    for (let i = 1; i < n; i++) {
      if (s.chars[i] === mark) {
        pieces.push([start, i]);
        start = i;
      }
    }
    if (n) pieces.push([start, n]);
    return pieces;
  };
}

/** Token spans of a tokenizer.json (its parsed `json`, and hf-exact's UnigramExact). */
export class TokenizerJsonSpans {
  constructor(json, unigram) {
    if (json.model?.type !== "Unigram" || !unigram) {
      throw new SpansUnsupportedError(`the ${json.model?.type} model (Unigram only)`);
    }
    if (json.added_tokens?.length) throw new SpansUnsupportedError("added tokens");
    if (json.post_processor) throw new SpansUnsupportedError("a post-processor");
    this.normalizers = normalizerSteps(json.normalizer);
    this.preTokenize = metaspace(json.pre_tokenizer);
    this.unigram = unigram;
    this.ids = unigram.ids;
  }

  /** {ids, spans: [[begin, end]] in code points, inBytes: false}, one per token. */
  pieceSpans(text) {
    const s = new Aligned(text);
    for (const step of this.normalizers) step(s);
    const pieces = [];
    const spans = [];
    for (const [start, end] of this.preTokenize(s)) {
      const token = s.chars.slice(start, end).join("");
      for (const [piece, begin, stop] of this.unigram.tokenize(token)) {
        pieces.push(piece);
        spans.push([s.align[start + begin][0], s.align[start + stop - 1][1]]);
      }
    }
    const unk = this.unigram.unkId;
    return {
      ids: pieces.map((p) => this.ids.get(p) ?? unk),
      spans: wholeScalars(spans, pieces),
      inBytes: false,
    };
  }
}
