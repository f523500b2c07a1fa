// Word units of the browser runtime, for comparison with the Python ones (word_units.py).
//
//   node web/tests/word-units.mjs CASES.json
//
// CASES: [{tokenizer: path, kind, rules: manifest.text, texts: [...]}]. Prints, per case and
// text, {raw: token spans of the text itself, words: [[begin, end]], chunks: [{spans, inBytes,
// units: [[begin, end, word index or -1, synthetic]], matrix: [...]}]} (unit and word offsets
// are JS string indices), or {raw, error}. Chunk texts are mostly normalized already (they are
// decoded tokens): the raw text's spans test the normalizers' alignments.

import { textToChunkTokens } from "../src/text.js";
import { mapChunks, sourceWords } from "../src/word-units.js";
import { runCases } from "./cases.mjs";

runCases((text, tokenizer, rules) => {
  const raw = tokenizer.pieceSpans(text).spans;
  let chunks;
  try {
    chunks = textToChunkTokens(text, tokenizer, rules);
  } catch (e) {
    return { raw, error: e.message };
  }
  const units = mapChunks(text, chunks.map((c) => c.text), tokenizer);
  return {
    raw,
    words: sourceWords(text).map((w) => [w.begin, w.end]),
    chunks: chunks.map((c, i) => {
      const { spans, inBytes } = tokenizer.pieceSpans(c.text);
      return {
        spans,
        inBytes,
        units: units[i].units.map((u) => [u.begin, u.end, u.word ? u.word.index : -1, u.synthetic]),
        matrix: Array.from(units[i].tokenToUnit),
      };
    }),
  };
});
