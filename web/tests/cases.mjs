// The harness of the tokenizer comparison scripts (tokens.mjs, word-units.mjs): reads the
// CASES file named on the command line ([{tokenizer: path, kind, rules, texts}]), loads each
// tokenizer, and prints [per case: [perText(text, tokenizer, rules) per text]] as JSON.

import { readFileSync } from "node:fs";
import { textRules } from "../src/text.js";
import { loadTokenizer } from "../src/tokenizer.js";

export function runCases(perText) {
  const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
  const out = cases.map(({ tokenizer: path, kind, rules, texts }) => {
    const tokenizer = loadTokenizer(readFileSync(path), kind);
    return texts.map((text) => perText(text, tokenizer, textRules(rules)));
  });
  console.log(JSON.stringify(out));
}
