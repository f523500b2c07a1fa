// Text rules and chunking: a line-by-line mirror of src/pocket_tts_onnx/text.py.
//
// The model embeds token ids with the table it was trained with, so the browser must feed it
// exactly the ids the Python runtime (and upstream pocket-tts) computes. Python string
// semantics are reproduced where JS differs: indexing by code point, str.split()/strip()
// whitespace, str.isupper() and str.isdigit().

export const DEFAULT_MAX_TOKENS_PER_CHUNK = 50;

const SENTENCE_END = ".!?\u2026";
const SOFT_END = ",;:-\u2013\u2014";
const TRAILING_CLOSERS = "\"'\u201d\u2019)]\u00bb";
const SENTENCE_MARKS_PROBE = ".!...?";
const CLAUSE_MARKS_PROBE = ",;:";
const SHORT_PROMPT_WORDS = 5;
const SHORT_PROMPT_PADDING = " ".repeat(8);

// Python's whitespace (str.isspace, str.split(), re's \s): JS \s lacks \x1c-\x1f and \x85
// and adds \ufeff.
const PY_WS = "\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const WS_RUN = new RegExp(`[${PY_WS}]+`, "g");
const WS_EDGES = new RegExp(`^[${PY_WS}]+|[${PY_WS}]+$`, "g");
const MARK_THEN_SOFT = new RegExp(`([.!?\\u2026])[${PY_WS}]*[,;:]`, "g");
// str.isdigit(): decimal digits plus the Numeric_Type=Digit characters (superscripts,
// circled digits...), as listed by CPython's unicodedata 14.0.
const PY_DIGIT = new RegExp(
  "^[\\p{Nd}\\u00b2\\u00b3\\u00b9\\u1369-\\u1371\\u19da\\u2070\\u2074-\\u2079\\u2080-\\u2089" +
    "\\u2460-\\u2468\\u2474-\\u247c\\u2488-\\u2490\\u24ea\\u24f5-\\u24fd\\u24ff\\u2776-\\u277e" +
    "\\u2780-\\u2788\\u278a-\\u2792\\u{10a40}-\\u{10a43}\\u{10e60}-\\u{10e68}" +
    "\\u{11052}-\\u{1105a}\\u{1f100}-\\u{1f10a}]$",
  "u",
);
const PY_UPPER = /^\p{Uppercase}$/u;

export class InvalidInputError extends Error {
  constructor(message) {
    super(message);
    this.name = "InvalidInputError";
  }
}

const pyStrip = (s) => s.replace(WS_EDGES, "");
const pySplit = (s) => pyStrip(s).split(WS_RUN).filter((w) => w !== "");
const codePoints = (s) => Array.from(s);

function rstripChars(s, chars) {
  const cps = codePoints(s);
  let end = cps.length;
  while (end > 0 && chars.includes(cps[end - 1])) end--;
  return cps.slice(0, end).join("");
}

/** Text rules from manifest.text, with upstream's defaults for missing keys. */
export function textRules(data = {}) {
  return {
    pad_with_spaces_for_short_inputs: false,
    remove_semicolons: false,
    append_terminal_punctuation: true,
    capitalize_first_letter: true,
    replace_characters: {},
    max_tokens_per_chunk: DEFAULT_MAX_TOKENS_PER_CHUNK,
    ...data,
  };
}

/** Upstream's prepare_text_prompt: [prepared text, frames-after-EOS guess (before +2)]. */
export function prepareChunk(text, rules) {
  if (typeof text !== "string") throw new InvalidInputError("text must be a string");
  text = pyStrip(text);
  const mapping = rules.replace_characters || {};
  if (Object.keys(mapping).length > 0) {
    text = codePoints(text)
      .map((c) => (Object.hasOwn(mapping, c) ? mapping[c] : c))
      .join("");
    text = pySplit(text).join(" ");
    text = text.replace(MARK_THEN_SOFT, "$1");
  }
  if (!text) {
    throw new InvalidInputError(
      "text is empty or only whitespace (after character replacements); " +
        "there is nothing to synthesize",
    );
  }
  // One non-overlapping pass, as upstream: four spaces become two.
  text = text.replaceAll("\n", " ").replaceAll("\r", " ").replaceAll("  ", " ");
  if (rules.remove_semicolons) text = text.replaceAll(";", ",");

  const guess = pySplit(text).length <= 4 ? 3 : 1;

  const first = codePoints(text)[0];
  if (rules.capitalize_first_letter && !PY_UPPER.test(first)) {
    text = first.toUpperCase() + text.slice(first.length);
  }
  if (rules.append_terminal_punctuation) text = endWithSentenceMark(text);
  if (rules.pad_with_spaces_for_short_inputs && pySplit(text).length < SHORT_PROMPT_WORDS) {
    text = SHORT_PROMPT_PADDING + text;
  }
  return [text, guess];
}

function endWithSentenceMark(text) {
  const body = rstripChars(text, TRAILING_CLOSERS + " ");
  const last = codePoints(body).at(-1);
  if (!body || SENTENCE_END.includes(last)) return text;
  if (SOFT_END.includes(last)) {
    const closers = pyStrip(text.slice(body.length));
    return rstripChars(body, SOFT_END + " ") + "." + closers;
  }
  return text + ".";
}

function cutPoints(ids, marks, tokenizer = null, keepDecimals = false) {
  const cuts = [0];
  let afterMark = false;
  ids.forEach((token, pos) => {
    if (marks.has(token)) {
      afterMark = true;
      return;
    }
    if (afterMark && !(keepDecimals && tokenizer && continuesDecimal(ids, pos, tokenizer))) {
      cuts.push(pos);
    }
    afterMark = false;
  });
  cuts.push(ids.length);
  return cuts;
}

// Decoding only a window of tokens around the boundary (widened until it holds a few
// characters) keeps splitting linear in the text, as the Python splitter does.
const WINDOW_CHARS = 8;

function decodeWindow(ids, pos, tokenizer, backwards) {
  for (let w = WINDOW_CHARS; ; w *= 2) {
    const lo = backwards ? Math.max(0, pos - w) : pos;
    const hi = backwards ? pos : Math.min(ids.length, pos + w);
    const text = codePoints(tokenizer.decode(ids.slice(lo, hi)));
    if ((backwards ? lo === 0 : hi === ids.length) || text.length >= WINDOW_CHARS) return text;
  }
}

function continuesDecimal(ids, pos, tokenizer) {
  const before = decodeWindow(ids, pos, tokenizer, true);
  if (!(before.length >= 2 && before.at(-1) === "." && PY_DIGIT.test(before.at(-2)))) {
    return false;
  }
  const after = decodeWindow(ids, pos, tokenizer, false);
  return after.length > 0 && PY_DIGIT.test(after[0]);
}

function decodePieces(ids, cuts, tokenizer) {
  const out = [];
  for (let i = 0; i + 1 < cuts.length; i++) {
    out.push([cuts[i + 1] - cuts[i], tokenizer.decode(ids.slice(cuts[i], cuts[i + 1]))]);
  }
  return out;
}

// A piece of more tokens than this is cut at word boundaries (text.py's MAX_CHUNK_TOKENS):
// upstream keeps it whole, far beyond the single sentences the model was trained on.
export const MAX_CHUNK_TOKENS = 1024;

/** The piece, or beyond MAX_CHUNK_TOKENS runs of whole words of at most `limit` tokens. */
function cutAtWords(count, piece, tokenizer, limit) {
  if (count <= MAX_CHUNK_TOKENS) return [[count, piece]];
  const out = [];
  let run = [];
  let runCount = 0;
  for (const word of pySplit(piece)) {
    const n = tokenizer.encode(word).length;
    if (run.length && runCount + n > limit) {
      out.push([runCount, run.join(" ")]);
      [run, runCount] = [[], 0];
    }
    run.push(word);
    runCount += n;
  }
  if (run.length) out.push([runCount, run.join(" ")]);
  return out;
}

/** Upstream's split_into_best_sentences (plus the word cut above): the chunks generated one
 * at a time. */
export function splitIntoChunks(text, tokenizer, rules) {
  const limit = rules.max_tokens_per_chunk;
  const [prepared] = prepareChunk(text, rules);
  const ids = tokenizer.encode(pyStrip(prepared));

  const sentenceMarks = new Set(tokenizer.encode(SENTENCE_MARKS_PROBE).slice(1));
  const sentences = decodePieces(ids, cutPoints(ids, sentenceMarks, tokenizer, true), tokenizer);

  const clauseMarks = new Set(tokenizer.encode(CLAUSE_MARKS_PROBE).slice(1));
  const pieces = [];
  for (const [count, sentence] of sentences) {
    if (count > limit) {
      const subIds = tokenizer.encode(pyStrip(sentence));
      const clauses = decodePieces(subIds, cutPoints(subIds, clauseMarks), tokenizer);
      if (clauses.length > 1) {
        for (const [n, clause] of clauses) pieces.push(...cutAtWords(n, clause, tokenizer, limit));
        continue;
      }
    }
    pieces.push(...cutAtWords(count, sentence, tokenizer, limit));
  }

  const chunks = [];
  let current = "";
  let currentCount = 0;
  for (const [count, piece] of pieces) {
    if (current === "") {
      // Quirk kept: a piece that decoded to "" is replaced by the next one.
      [current, currentCount] = [piece, count];
    } else if (currentCount + count > limit) {
      chunks.push(pyStrip(current));
      [current, currentCount] = [piece, count];
    } else {
      current += " " + piece;
      currentCount += count;
    }
  }
  if (current !== "") chunks.push(pyStrip(current));
  return chunks;
}

/** What the model is fed: [{text, tokenIds, framesAfterEosGuess}] per chunk. */
export function textToChunkTokens(text, tokenizer, rules) {
  const out = [];
  for (const chunk of splitIntoChunks(text, tokenizer, rules)) {
    const [prepared, guess] = prepareChunk(chunk, rules);
    const ids = tokenizer.encode(prepared);
    if (ids.length === 0) {
      throw new InvalidInputError(
        `text chunk ${JSON.stringify(prepared)} has no tokens the model knows; nothing to synthesize`,
      );
    }
    out.push({ text: prepared, tokenIds: ids, framesAfterEosGuess: guess });
  }
  if (out.length === 0) {
    throw new InvalidInputError(
      "text has no tokens the model knows (only characters the tokenizer drops); " +
        "nothing to synthesize",
    );
  }
  return out;
}

/** Upstream's _estimate_max_gen_len. */
export function estimateMaxFrames(tokenCount, frameRate, tokensPerSecond = 3.0, paddingSeconds = 2.0) {
  return Math.ceil((tokenCount / tokensPerSecond + paddingSeconds) * frameRate);
}
