// Token ids of the browser text pipeline, for comparison with the Python one.
//
//   node web/tests/tokens.mjs CASES.json
//
// CASES: [{tokenizer: path, kind, rules: manifest.text, texts: [...]}]. Prints, per case and
// text, {encode, decode, chunks: [{text, ids, guess}]} or {error} when the text is rejected.

import { textToChunkTokens } from "../src/text.js";
import { runCases } from "./cases.mjs";

runCases((text, tokenizer, rules) => {
  const encode = tokenizer.encode(text);
  const result = { encode, decode: tokenizer.decode(encode) };
  try {
    result.chunks = textToChunkTokens(text, tokenizer, rules).map((c) => ({
      text: c.text,
      ids: c.tokenIds,
      guess: c.framesAfterEosGuess,
    }));
  } catch (e) {
    result.error = e.message;
  }
  return result;
});
