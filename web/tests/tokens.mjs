// Token ids of the browser text pipeline, for comparison with the Python one.
//
//   node web/tests/tokens.mjs CASES.json
//
// CASES: [{tokenizer: path, kind, rules: manifest.text, texts: [...]}]. Prints, per case and
// text, {encode, decode, chunks: [{text, ids, guess}]} or {error} when the text is rejected.

import { readFileSync } from "node:fs";
import { textRules, textToChunkTokens } from "../src/text.js";
import { loadTokenizer } from "../src/tokenizer.js";

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = [];
for (const { tokenizer: path, kind, rules, texts } of cases) {
  const tokenizer = loadTokenizer(readFileSync(path), kind);
  out.push(
    texts.map((text) => {
      const encode = tokenizer.encode(text);
      const result = { encode, decode: tokenizer.decode(encode) };
      try {
        result.chunks = textToChunkTokens(text, tokenizer, textRules(rules)).map((c) => ({
          text: c.text,
          ids: c.tokenIds,
          guess: c.framesAfterEosGuess,
        }));
      } catch (e) {
        result.error = e.message;
      }
      return result;
    }),
  );
}
console.log(JSON.stringify(out));
