// SentencePiece unigram tokenization in plain JS, written to give the ids of the Python
// `sentencepiece` package (0.2.x): its normalizer (precompiled charsmap in a Darts
// double-array, user-defined symbols kept verbatim, whitespace handling), its optimized
// Viterbi (float32 scores; on ties the piece starting first wins), unknown-run merging and
// byte fallback, and its decoder. Everything works on UTF-8 bytes, as the C++ library does.
// pieceSpans() gives the library's offset_mapping (word timestamps locate tokens with it).

import { parseModel, TYPE, UNIGRAM } from "./sentencepiece-model.js";
import { wholeScalars } from "./token-spans.js";

const SPACE = [0xe2, 0x96, 0x81]; // U+2581, the word-boundary symbol
const SPACE_CHAR = "\u2581";
const REPLACEMENT = [0xef, 0xbf, 0xbd];
const UNK_PENALTY = 10;
const SCORE_RESET = 100000;
const MAX_CHARSMAP_RESULTS = 32;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

// ------------------------------------------------------------------------- helpers

// Byte length of the UTF-8 character starting with byte b (by its high nibble).
const oneCharLen = (b) => [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4][b >> 4];

const isTrail = (b) => (b & 0xc0) === 0x80;
const validCodepoint = (c) => c < 0xd800 || (c >= 0xe000 && c <= 0x10ffff);

// Length of a valid UTF-8 character at bytes[pos], or 0 when malformed.
function validCharLen(bytes, pos) {
  const b0 = bytes[pos];
  const left = bytes.length - pos;
  if (b0 < 0x80) return 1;
  if (left >= 2 && (b0 & 0xe0) === 0xc0 && isTrail(bytes[pos + 1])) {
    const cp = ((b0 & 0x1f) << 6) | (bytes[pos + 1] & 0x3f);
    return cp >= 0x80 ? 2 : 0;
  }
  if (left >= 3 && (b0 & 0xf0) === 0xe0 && isTrail(bytes[pos + 1]) && isTrail(bytes[pos + 2])) {
    const cp = ((b0 & 0x0f) << 12) | ((bytes[pos + 1] & 0x3f) << 6) | (bytes[pos + 2] & 0x3f);
    return cp >= 0x800 && validCodepoint(cp) ? 3 : 0;
  }
  if (left >= 4 && (b0 & 0xf8) === 0xf0 && [1, 2, 3].every((k) => isTrail(bytes[pos + k]))) {
    const cp = ((b0 & 0x07) << 18) | ((bytes[pos + 1] & 0x3f) << 12) |
      ((bytes[pos + 2] & 0x3f) << 6) | (bytes[pos + 3] & 0x3f);
    return cp >= 0x10000 && validCodepoint(cp) ? 4 : 0;
  }
  return 0;
}

// A byte trie: nested Maps, `id` on nodes that end a key.
function buildTrie(entries) {
  const root = { next: new Map(), id: -1 };
  for (const [key, id] of entries) {
    let node = root;
    for (const b of utf8.encode(key)) {
      if (!node.next.has(b)) node.next.set(b, { next: new Map(), id: -1 });
      node = node.next.get(b);
    }
    node.id = id;
  }
  return root;
}

// ------------------------------------------------------------------------- normalizer

class Normalizer {
  constructor(model, userSymbols) {
    this.m = model;
    this.userTrie = userSymbols.length ? buildTrie(userSymbols.map((s) => [s, 0])) : null;
    if (model.charsmap) {
      const blob = model.charsmap;
      const view = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
      const trieSize = view.getUint32(0, true);
      if (trieSize < 1024 || trieSize % 1024 !== 0 || trieSize >= blob.length - 4) {
        throw new Error("the SentencePiece model's precompiled charsmap is broken");
      }
      this.units = new Uint32Array(trieSize / 4);
      for (let i = 0; i < this.units.length; i++) this.units[i] = view.getUint32(4 + 4 * i, true);
      this.replacements = blob.subarray(4 + trieSize);
    }
  }

  // Darts-clone commonPrefixSearch: [value, length] of every key that prefixes bytes[pos:].
  charsmapMatches(bytes, pos) {
    const units = this.units;
    const out = [];
    const offset = (u) => (u >>> 10) << ((u & (1 << 9)) >>> 6);
    let node = offset(units[0]);
    for (let i = pos; i < bytes.length; i++) {
      node ^= bytes[i];
      if (node >= units.length) break;
      const unit = units[node];
      if ((unit & 0x800000ff) >>> 0 !== bytes[i]) break;
      node ^= offset(unit);
      if ((unit >>> 8) & 1 && out.length < MAX_CHARSMAP_RESULTS) {
        out.push([units[node] & 0x7fffffff, i + 1 - pos]);
      }
    }
    return out;
  }

  // [replacement bytes, bytes consumed] for the longest rule at bytes[pos:].
  prefix(bytes, pos) {
    if (this.userTrie) {
      let node = this.userTrie;
      let longest = 0;
      for (let i = pos; i < bytes.length && (node = node.next.get(bytes[i])); i++) {
        if (node.id >= 0) longest = i + 1 - pos;
      }
      if (longest) return [bytes.subarray(pos, pos + longest), longest];
    }
    let length = 0;
    let value = 0;
    if (this.units) {
      for (const [v, len] of this.charsmapMatches(bytes, pos)) {
        if (length === 0 || len > length) [length, value] = [len, v];
      }
    }
    if (length === 0 || value >= this.replacements.length) {
      const len = validCharLen(bytes, pos);
      return len ? [bytes.subarray(pos, pos + len), len] : [REPLACEMENT, 1];
    }
    const end = this.replacements.indexOf(0, value);
    return [this.replacements.subarray(value, end < 0 ? undefined : end), length];
  }

  normalize(text) {
    return this.normalizeWithOffsets(text).bytes;
  }

  // The normalized bytes and, for each of their positions (and the end), the byte offset in
  // the UTF-8 input it comes from: the library's norm_to_orig, which its offsets use.
  normalizeWithOffsets(text) {
    const m = this.m;
    const input = utf8.encode(text);
    let pos = 0;
    if (m.removeExtraWhitespaces) {
      while (pos < input.length) {
        const [rep, len] = this.prefix(input, pos);
        if (!(rep.length === 1 && rep[0] === 0x20)) break;
        pos += len;
      }
    }
    if (pos >= input.length) return { bytes: new Uint8Array(0), toOriginal: [pos] };
    const ws = m.escapeWhitespaces ? SPACE : [0x20];
    const out = [];
    const toOriginal = [];
    const push = (bytes, from) => {
      out.push(...bytes);
      for (let k = 0; k < bytes.length; k++) toOriginal.push(from);
    };
    if (!m.wsSuffix && m.addDummyPrefix) push(ws, pos);
    let prevSpace = m.removeExtraWhitespaces;
    while (pos < input.length) {
      const [rep, len] = this.prefix(input, pos);
      let start = 0;
      while (prevSpace && start < rep.length && rep[start] === 0x20) start++;
      if (start < rep.length) {
        for (let k = start; k < rep.length; k++) push(rep[k] === 0x20 ? ws : [rep[k]], pos);
        prevSpace = rep[rep.length - 1] === 0x20;
      }
      pos += len;
      if (!m.removeExtraWhitespaces) prevSpace = false;
    }
    if (m.removeExtraWhitespaces) {
      const endsWithWs = () =>
        out.length >= ws.length && ws.every((b, k) => out[out.length - ws.length + k] === b);
      while (endsWithWs()) {
        out.length -= ws.length;
        pos = toOriginal[out.length];
        toOriginal.length = out.length;
      }
    }
    if (m.wsSuffix && m.addDummyPrefix) push(ws, pos);
    toOriginal.push(pos);
    return { bytes: Uint8Array.from(out), toOriginal };
  }
}

// ------------------------------------------------------------------------- model

export class SentencePieceUnigram {
  /** Parse a .model file; throws on what this implementation does not cover. */
  constructor(bytes) {
    const m = parseModel(bytes);
    if (m.modelType !== UNIGRAM) {
      throw new Error(
        `SentencePiece model type ${m.modelType} is not supported in the browser (unigram only)`,
      );
    }
    if (m.denormalizes) throw new Error("SentencePiece denormalization rules are not supported");
    if (m.pieces.length === 0) throw new Error("the SentencePiece model has no pieces");
    this.m = m;
    this.pieces = m.pieces;
    this.unkId = m.pieces.findIndex((p) => p.type === TYPE.UNKNOWN);
    if (this.unkId < 0 && !m.byteFallback) throw new Error("the SentencePiece model has no <unk>");
    const vocab = [];
    const user = [];
    let minScore = Infinity;
    m.pieces.forEach((p, id) => {
      if ([TYPE.NORMAL, TYPE.USER_DEFINED, TYPE.UNUSED].includes(p.type)) vocab.push([p.piece, id]);
      if (p.type === TYPE.USER_DEFINED) user.push(p.piece);
      if (p.type === TYPE.NORMAL) minScore = Math.min(minScore, p.score);
    });
    this.trie = buildTrie(vocab);
    this.unkScore = Math.fround(minScore - UNK_PENALTY);
    this.byteIds = new Map();
    m.pieces.forEach((p, id) => {
      if (p.type === TYPE.BYTE) this.byteIds.set(parseInt(p.piece.slice(3, 5), 16), id);
    });
    // Pieces with a word boundary inside (not just in front) decode every U+2581.
    this.internalSpace = m.pieces.some(
      (p) => ![TYPE.CONTROL, TYPE.UNKNOWN, TYPE.BYTE].includes(p.type) &&
        p.piece.replace(/^\u2581/, "").includes(SPACE_CHAR),
    );
    this.normalizer = new Normalizer(m, user);
  }

  // The optimized Viterbi over the normalized bytes: [[start, end, id], ...].
  viterbi(norm) {
    const size = norm.length;
    const bestId = new Int32Array(size + 1).fill(-1);
    const bestScore = new Float32Array(size + 1);
    const startsAt = new Int32Array(size + 1).fill(-1);
    const consider = (end, start, id, score) => {
      if (startsAt[end] === -1 || score > bestScore[end]) {
        bestScore[end] = score;
        startsAt[end] = start;
        bestId[end] = id;
      }
    };
    let frontier = 0;
    for (let start = 0; start < size; ) {
      let till = bestScore[start];
      if (till < -SCORE_RESET || till > SCORE_RESET) {
        // Keep float32 scores small on very long inputs, as the library does.
        for (let i = start; i <= frontier; i++) {
          if (i === start || startsAt[i] !== -1) bestScore[i] -= till;
        }
        till = 0;
      }
      const mblen = Math.min(oneCharLen(norm[start]), size - start);
      let single = false;
      let node = this.trie;
      for (let end = start + 1; end <= size && (node = node.next.get(norm[end - 1])); end++) {
        const id = node.id;
        if (id < 0 || this.pieces[id].type === TYPE.UNUSED) continue;
        frontier = Math.max(frontier, end);
        const length = end - start;
        const score = this.pieces[id].type === TYPE.USER_DEFINED
          ? Math.fround(0.1 * (length - 1))
          : this.pieces[id].score;
        consider(end, start, id, Math.fround(score + till));
        if (length === mblen) single = true;
      }
      if (!single) {
        frontier = Math.max(frontier, start + mblen);
        consider(start + mblen, start, this.unkId, Math.fround(this.unkScore + till));
      }
      start += mblen;
    }
    const path = [];
    for (let end = size; end > 0; end = startsAt[end]) path.push([startsAt[end], end, bestId[end]]);
    return path.reverse();
  }

  // The pieces of normalized bytes, as the library emits them: [start, end, id, last] where
  // byte fallback splits an unknown character into its bytes (`last` marks its final byte)
  // and a run of unknown characters is one <unk> piece.
  _pieces(norm) {
    const out = [];
    let prevUnk = false;
    for (const [start, end, id] of this.viterbi(norm)) {
      const unk = id === this.unkId;
      if (unk && this.m.byteFallback) {
        for (let i = start; i < end; i++) {
          out.push([start, end, this.byteIds.get(norm[i]), i + 1 === end]);
        }
      } else if (prevUnk && unk) {
        out[out.length - 1][1] = end;
      } else {
        out.push([start, end, id, true]);
      }
      prevUnk = unk;
    }
    return out;
  }

  encode(text) {
    return this._pieces(this.normalizer.normalize(text)).map((p) => p[2]);
  }

  /** Each token's [begin, end) in `text` in UTF-8 bytes, as the Python package's
   * offset_mapping (then whole characters for byte pieces): {spans, inBytes: true}. */
  pieceSpans(text) {
    const { bytes, toOriginal } = this.normalizer.normalizeWithOffsets(text);
    const pieces = this._pieces(bytes);
    const spans = pieces.map(([start, end, , last]) => {
      const begin = toOriginal[start];
      return [begin, last ? toOriginal[end] : begin];
    });
    const names = pieces.map((p) => this.pieces[p[2]].piece);
    return { spans: wholeScalars(spans, names), inBytes: true };
  }

  decode(ids) {
    const m = this.m;
    let text = "";
    let bytes = [];
    let bosWs = true;
    let bosWsSeen = false;
    const flushBytes = () => {
      const raw = Uint8Array.from(bytes);
      for (let pos = 0; pos < raw.length; ) {
        const len = validCharLen(raw, pos);
        text += len ? fromUtf8.decode(raw.subarray(pos, pos + len)) : "\ufffd";
        pos += len || 1;
      }
      bytes = [];
    };
    for (const id of ids) {
      const { piece, type } = this.pieces[id];
      if (type === TYPE.BYTE) {
        bytes.push(parseInt(piece.slice(3, 5), 16));
        continue;
      }
      flushBytes();
      if (bosWsSeen || text !== "") bosWs = false;
      bosWsSeen = false;
      if (type === TYPE.CONTROL) continue;
      if (id === this.unkId) {
        text += m.unkSurface;
        continue;
      }
      let rest = piece;
      if (bosWs && (m.addDummyPrefix || m.removeExtraWhitespaces)) {
        bosWsSeen = rest.startsWith(SPACE_CHAR);
        if (bosWsSeen) rest = rest.slice(1);
        if (m.removeExtraWhitespaces) bosWsSeen = false;
      }
      if (rest.startsWith(SPACE_CHAR)) {
        text += " ";
        rest = rest.slice(1);
      }
      text += this.internalSpace ? rest.replaceAll(SPACE_CHAR, " ") : rest;
    }
    flushBytes();
    return text;
  }
}
