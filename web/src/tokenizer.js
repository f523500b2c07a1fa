// The bundle's tokenizer, called the way the Python runtime calls it (default options).
//
// SentencePiece .model files (unigram) run through sentencepiece.js, a JS port of the
// library's encoder; HuggingFace tokenizer.json files through tokenizers.js (pure JS), with
// the steps it only approximates for SentencePiece conversions (Precompiled normalizer,
// Metaspace split, Unigram) replaced by exact ones (hf-exact.js). Both are checked against
// the Python packages by tests/test_web.py.

import { Tokenizer as HFTokenizer } from "@huggingface/tokenizers";
import { makeExact } from "./hf-exact.js";
import { SentencePieceUnigram } from "./sentencepiece.js";

export const TOKENIZER_KINDS = ["sentencepiece", "tokenizers", "json"];

class JsonTokenizer {
  constructor(tokenizer) {
    this._tok = tokenizer;
  }

  encode(text) {
    return this._tok.encode(text).ids;
  }

  decode(ids) {
    // Python's Tokenizer.decode skips special tokens by default; tokenizers.js rejects [].
    return ids.length ? this._tok.decode(ids, { skip_special_tokens: true }) : "";
  }
}

/** Build a tokenizer from the file's bytes; `kind` is manifest.tokenizer.kind. */
export function loadTokenizer(bytes, kind) {
  if (!TOKENIZER_KINDS.includes(kind)) {
    throw new Error(`unknown tokenizer kind ${JSON.stringify(kind)} in the manifest`);
  }
  if (kind === "sentencepiece") {
    try {
      return new SentencePieceUnigram(bytes);
    } catch (e) {
      throw new Error(`the bundle's tokenizer.model cannot be used: ${e.message}`);
    }
  }
  let json;
  try {
    json = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new Error(`the bundle's tokenizer.json is not valid JSON (${e.message})`);
  }
  // A bundle has no tokenizer_config.json; decode must not "clean up" spaces, as Python's.
  const tokenizer = new HFTokenizer(json, { clean_up_tokenization_spaces: false });
  return new JsonTokenizer(makeExact(tokenizer, json));
}
