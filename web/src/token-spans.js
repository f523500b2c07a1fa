// Token spans shared by both tokenizer families (runtime/tokenizer.py _whole_scalars): the
// byte-fallback pieces (<0xE2> <0x80> <0xA6>) of one character all get that character's span,
// whichever of them the backend reported it on.

const byteValue = (piece) =>
  /^<0x[0-9A-Fa-f]{2}>$/.test(piece) ? parseInt(piece.slice(3, 5), 16) : null;

function utf8Length(first) {
  if (first >= 0xc2 && first <= 0xdf) return 2;
  if (first >= 0xe0 && first <= 0xef) return 3;
  if (first >= 0xf0 && first <= 0xf4) return 4;
  return 1;
}

/** `spans` ([[begin, end], ...], one per token) with whole characters for byte pieces. */
export function wholeScalars(spans, pieces) {
  spans = spans.map((s) => [...s]);
  for (let i = 0; i < pieces.length; ) {
    const first = byteValue(pieces[i]);
    if (first === null) {
      i++;
      continue;
    }
    const size = utf8Length(first);
    const values = pieces.slice(i, i + size).map(byteValue);
    const whole = values.length === size && values.every((v) => v !== null) &&
      values.slice(1).every((v) => v >= 0x80 && v <= 0xbf);
    const end = whole ? i + size : i + 1;
    const part = spans.slice(i, end);
    const begin = Math.min(...part.map((s) => s[0]));
    const stop = Math.max(...part.map((s) => s[1]));
    if (stop > begin) for (let k = i; k < end; k++) spans[k] = [begin, stop];
    i = end;
  }
  return spans;
}
