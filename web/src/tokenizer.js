// The bundle's tokenizer, called the way the Python runtime calls it (default options).
//
// SentencePiece .model files (unigram) run through sentencepiece.js, a JS port of the
// library's encoder; HuggingFace tokenizer.json files through tokenizers.js (pure JS), with
// the steps it only approximates for SentencePiece conversions (Precompiled normalizer,
// Metaspace split, Unigram) replaced by exact ones (hf-exact.js). Both are checked against
// the Python packages by tests/test_web.py. pieceSpans(text) locates each token in the text
// as the Python runtime's Tokenizer.piece_spans does (for word timestamps).

import { Tokenizer as HFTokenizer } from "@huggingface/tokenizers";
import { makeExact } from "./hf-exact.js";
import { SpansUnsupportedError, TokenizerJsonSpans } from "./hf-spans.js";
import { SentencePieceUnigram } from "./sentencepiece.js";

export const TOKENIZER_KINDS = ["sentencepiece", "tokenizers", "json"];

class JsonTokenizer {
  constructor(tokenizer, json) {
    this._tok = tokenizer;
    this._json = json;
    this._spans = undefined; // made on first use
  }

  encode(text) {
    return this._tok.encode(text).ids;
  }

  decode(ids) {
    // Python's Tokenizer.decode skips special tokens by default; tokenizers.js rejects [].
    return ids.length ? this._tok.decode(ids, { skip_special_tokens: true }) : "";
  }

  /** {spans: [[begin, end]] in code points, inBytes: false}, one per token of encode(text). */
  pieceSpans(text) {
    if (this._spans === undefined) {
      try {
        this._spans = new TokenizerJsonSpans(this._json, this._tok.unigramExact);
      } catch (e) {
        if (!(e instanceof SpansUnsupportedError)) throw e;
        this._spans = e;
      }
    }
    if (this._spans instanceof Error) {
      throw new SpansUnsupportedError(
        `timestamps: the browser cannot locate the tokens of this tokenizer.json ` +
          `(${this._spans.message} is not covered); use the Python engine`,
      );
    }
    const { ids, spans, inBytes } = this._spans.pieceSpans(text);
    const want = this.encode(text);
    if (ids.length !== want.length || ids.some((id, i) => id !== want[i])) {
      throw new Error("timestamps: the token spans disagree with the token ids");
    }
    return { spans, inBytes };
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
  return new JsonTokenizer(makeExact(tokenizer, json), json);
}
