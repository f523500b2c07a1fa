// Words of the caller's text, located in the prepared chunks the model speaks, and the share of
// each chunk token that belongs to each word or punctuation mark ("unit"): a mirror of
// src/pocket_tts_onnx/word_units.py (the rules of pocket-tts-timestamped 1.4.0).
//
// A word is a run of letters/digits (with combining marks, joined across ' and - when a letter
// follows); source and chunk words are paired by their folded form (NFKC, casefold), or, when
// the chunking changed the words, only where a folded form is unique on both sides and in
// order. Punctuation runs are units too; one the text rules appended is "synthetic". Python
// counts characters in code points; here every offset is a JS string index (UTF-16), so that
// `text.slice(begin, end)` is the word, and token overlaps are measured in the units the
// tokenizer reports (UTF-8 bytes or code points), as Python measures them.

// Python's str.isalnum(), category M and category P of one character: the same sets as
// CPython's Unicode 14 for every character assigned there.
const ALNUM = /^[\p{L}\p{N}]$/u;
const MARK = /^\p{M}$/u;
const PUNCT = /^\p{P}$/u;
const JOINERS = new Set(["-", "\u2010", "\u2011", "'", "\u2019"]);
const FOLD = new Map([["\u2019", "'"], ["\u2010", "-"], ["\u2011", "-"]]);

const utf8Length = (cp) => (cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4);
const charAt = (text, i) => String.fromCodePoint(text.codePointAt(i));

// str.casefold() of one character where toUpperCase().toLowerCase() differs from it.
function casefoldChar(c) {
  const cp = c.codePointAt(0);
  if (cp === 0x131) return c; // dotless i
  if (cp === 0x1e9e) return "ss"; // capital sharp s
  if (cp >= 0x13a0 && cp <= 0x13f5) return c; // Cherokee folds to its capitals
  if (cp >= 0x13f8 && cp <= 0x13fd) return String.fromCodePoint(cp - 8);
  if (cp >= 0xab70 && cp <= 0xabbf) return String.fromCodePoint(cp - 0xab70 + 0x13a0);
  return c.toUpperCase().toLowerCase();
}

/** Python's _folded: NFKC, casefold, ’ and hyphens unified, letters/digits/'/- kept. */
export function folded(text) {
  let out = "";
  for (const c of text.normalize("NFKC")) {
    for (const f of casefoldChar(c)) {
      const d = FOLD.get(f) ?? f;
      if (ALNUM.test(d) || d === "'" || d === "-") out += d;
    }
  }
  return out;
}

function wordSpans(text) {
  const spans = [];
  const n = text.length;
  let i = 0;
  while (i < n) {
    const c = charAt(text, i);
    if (!ALNUM.test(c)) {
      i += c.length;
      continue;
    }
    const begin = i;
    for (;;) {
      while (i < n) {
        const d = charAt(text, i);
        if (!ALNUM.test(d) && !MARK.test(d)) break;
        i += d.length;
      }
      if (i + 1 < n && JOINERS.has(text[i]) && ALNUM.test(charAt(text, i + 1))) {
        i += 1;
        continue;
      }
      break;
    }
    if (folded(text.slice(begin, i))) spans.push([begin, i]);
  }
  return spans;
}

/** The words of `text`: [{text, index, begin, end}], `text.slice(begin, end)` each. */
export function sourceWords(text) {
  return wordSpans(text).map(([begin, end], index) => ({
    text: text.slice(begin, end), index, begin, end,
  }));
}

function count(keys) {
  const counts = new Map();
  for (const k of keys) counts.set(k, (counts.get(k) ?? 0) + 1);
  return counts;
}

// [[source word, chunk index, begin, end]] and the chunk words [c, b, e] left unpaired.
function pairWords(words, chunkWords, chunks) {
  const keys = words.map((w) => folded(w.text));
  const chunkKeys = chunkWords.map(([c, b, e]) => folded(chunks[c].slice(b, e)));
  if (keys.length === chunkKeys.length && keys.every((k, i) => k === chunkKeys[i])) {
    return [words.map((w, i) => [w, ...chunkWords[i]]), []];
  }
  const counts = count(keys);
  const chunkCounts = count(chunkKeys);
  const where = new Map(chunkKeys.map((k, j) => [k, j]));
  const pairs = [];
  let last = -1;
  keys.forEach((k, i) => {
    if (counts.get(k) === 1 && chunkCounts.get(k) === 1 && where.get(k) > last) {
      pairs.push([i, where.get(k)]);
      last = where.get(k);
    }
  });
  const paired = new Set(pairs.map(([, j]) => j));
  const left = chunkWords.filter((_, j) => !paired.has(j));
  return [pairs.map(([i, j]) => [words[i], ...chunkWords[j]]), left];
}

function punctuation(text, covered) {
  const runs = [];
  let i = 0;
  const isFreeMark = (k) => !covered[k] && PUNCT.test(charAt(text, k));
  while (i < text.length) {
    if (!isFreeMark(i)) {
      i += charAt(text, i).length;
      continue;
    }
    let j = i + charAt(text, i).length;
    while (j < text.length && isFreeMark(j)) j += charAt(text, j).length;
    runs.push([i, j]);
    i = j;
  }
  return runs;
}

function hasPunctuation(text) {
  for (const c of text) if (PUNCT.test(c)) return true;
  return false;
}

function makeUnits(source, words, text, mapped, ignored) {
  const units = [];
  const covered = new Array(text.length).fill(false);
  const cover = (begin, end) => covered.fill(true, begin, end);
  for (const [word, begin, end] of mapped) {
    units.push({ begin, end, word, synthetic: false });
    cover(begin, end);
  }
  for (const [begin, end] of ignored) {
    units.push({ begin, end, word: null, synthetic: true });
    cover(begin, end);
  }
  for (const [begin, end] of punctuation(text, covered)) {
    let synthetic = false;
    if (mapped.length && begin >= mapped.at(-1)[2]) {
      const last = mapped.at(-1)[0];
      const stop = last.index + 1 < words.length ? words[last.index + 1].begin : source.length;
      synthetic = !hasPunctuation(source.slice(last.end, stop));
    }
    units.push({ begin, end, word: null, synthetic });
  }
  units.sort((a, b) => a.begin - b.begin || a.end - b.end);
  return units;
}

// Offsets of every string index, in the units the tokenizer's spans use.
function positions(text, inBytes) {
  const at = new Int32Array(text.length + 1);
  let pos = 0;
  for (let i = 0; i < text.length; ) {
    const cp = text.codePointAt(i);
    const width = cp > 0xffff ? 2 : 1;
    at[i] = pos;
    if (width === 2) at[i + 1] = pos;
    pos += inBytes ? utf8Length(cp) : 1;
    i += width;
  }
  at[text.length] = pos;
  return at;
}

function tokenToUnit(text, units, spans, inBytes) {
  const at = positions(text, inBytes);
  const bounds = units.map((u) => [at[u.begin], at[u.end]]);
  const matrix = new Float32Array(spans.length * bounds.length);
  spans.forEach(([pb, pe], t) => {
    const row = bounds.map(([ub, ue]) => Math.max(0, Math.min(pe, ue) - Math.max(pb, ub)));
    const total = row.reduce((a, b) => a + b, 0);
    row.forEach((o, u) => (matrix[t * bounds.length + u] = total > 0 ? o / total : o));
  });
  return matrix;
}

/**
 * The units of each chunk (as spoken: its prepared text) with their source words:
 * [{units: [{begin, end, word: {text, index, begin, end} | null, synthetic}], wordUnits,
 * tokens, tokenToUnit: Float32Array [tokens x units]}].
 */
export function mapChunks(source, chunkTexts, tokenizer) {
  const words = sourceWords(source);
  const chunkWords = chunkTexts.flatMap((t, c) => wordSpans(t).map(([b, e]) => [c, b, e]));
  const [pairs, left] = pairWords(words, chunkWords, chunkTexts);
  return chunkTexts.map((text, c) => {
    const mapped = pairs.filter(([, ci]) => ci === c).map(([w, , b, e]) => [w, b, e]);
    const ignored = left.filter(([ci]) => ci === c).map(([, b, e]) => [b, e]);
    const units = makeUnits(source, words, text, mapped, ignored);
    const { spans, inBytes } = tokenizer.pieceSpans(text);
    return {
      units,
      wordUnits: units.flatMap((u, i) => (u.word ? [i] : [])),
      tokens: spans.length,
      tokenToUnit: tokenToUnit(text, units, spans, inBytes),
    };
  });
}
