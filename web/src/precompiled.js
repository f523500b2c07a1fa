// The "Precompiled" normalizer of tokenizer.json files converted from SentencePiece models,
// computed as HuggingFace tokenizers (the Rust crate behind Python `tokenizers`) does.
//
// The charsmap is SentencePiece's: a little-endian uint32 byte size of a Darts double-array
// trie, the trie's uint32 units, then NUL-terminated replacement strings that the trie's
// values index. The rewrite rule differs from SentencePiece's own normalizer (longest match,
// left to right): the text is cut into extended grapheme clusters; a cluster under 6 UTF-8
// bytes is replaced whole by the value of the *shortest* key that prefixes it, if any;
// otherwise each of its characters is replaced by the shortest key prefixing it, or kept.

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

export class PrecompiledCharsmap {
  /** `blob`: the charsmap bytes (tokenizer.json holds them base64-encoded). */
  constructor(blob) {
    const view = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
    if (blob.length < 4) throw new Error("the Precompiled charsmap is truncated");
    const trieSize = view.getUint32(0, true);
    if (trieSize % 4 !== 0 || 4 + trieSize > blob.length) {
      throw new Error("the Precompiled charsmap is broken (bad trie size)");
    }
    this.units = new Uint32Array(trieSize / 4);
    for (let i = 0; i < this.units.length; i++) this.units[i] = view.getUint32(4 + 4 * i, true);
    this.strings = blob.subarray(4 + trieSize);
    this.cache = new Map();
    this.segmenter = new Intl.Segmenter(undefined, { granularity: "grapheme" });
  }

  static fromBase64(text) {
    const binary = atob(text);
    const blob = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) blob[i] = binary.charCodeAt(i);
    return new PrecompiledCharsmap(blob);
  }

  // Value of the shortest trie key that is a prefix of `bytes` (stopping at a NUL byte).
  _firstPrefixValue(bytes) {
    const units = this.units;
    if (!units.length) return -1;
    const offset = (u) => (u >>> 10) << ((u & (1 << 9)) >>> 6);
    let node = offset(units[0]);
    for (const b of bytes) {
      if (b === 0) break;
      node ^= b;
      if (node >= units.length) return -1;
      const unit = units[node];
      if ((unit & 0x800000ff) >>> 0 !== b) return -1;
      node ^= offset(unit);
      if ((unit >>> 8) & 1) return node < units.length ? units[node] & 0x7fffffff : -1;
    }
    return -1;
  }

  /** The replacement for `chunk` (a string), or null when no rule applies. */
  transform(chunk) {
    let hit = this.cache.get(chunk);
    if (hit !== undefined) return hit;
    const value = this._firstPrefixValue(utf8.encode(chunk));
    hit = null;
    if (value >= 0 && value <= this.strings.length) {
      let end = this.strings.indexOf(0, value);
      if (end < 0) end = this.strings.length;
      hit = fromUtf8.decode(this.strings.subarray(value, end));
    }
    if (this.cache.size < 100_000) this.cache.set(chunk, hit);
    return hit;
  }

  normalize(text) {
    let out = "";
    for (const { segment } of this.segmenter.segment(text)) {
      if (utf8.encode(segment).length < 6) {
        const whole = this.transform(segment);
        if (whole !== null) {
          out += whole;
          continue;
        }
      }
      for (const c of segment) out += this.transform(c) ?? c;
    }
    return out;
  }
}
