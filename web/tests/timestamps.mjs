// The word-timestamp rule of the browser runtime on synthetic inputs, for comparison with the
// Python one (runtime/timestamps.py).
//
//   node web/tests/timestamps.mjs CASES.json
//
// CASES: {aligner: [{units: [{word, synthetic}], frames: [{scores, voiced, t}], finish}],
// voiced: [[samples]], scores: [{units, heads, start, end, queries, dims, keys: {layer:
// {data, heads, capacity}}}]}. Prints {aligner: [[events]], voiced: [bool], scores: [[...]]}.

import { readFileSync } from "node:fs";
import { isVoiced, TextTiming, WordAligner } from "../src/timestamps.js";

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const aligner = cases.aligner.map(({ units, frames, finish }) => {
  const a = new WordAligner({ units });
  const events = frames.flatMap(({ scores, voiced, t }) =>
    a.frame(Float32Array.from(scores), voiced, t));
  return [...events, ...a.finish(finish)];
});
const voiced = cases.voiced.map((samples) => isVoiced(Float32Array.from(samples)));
const scores = cases.scores.map((c) => {
  const units = { ...c.units, tokenToUnit: Float32Array.from(c.units.tokenToUnit) };
  const timing = new TextTiming(units, c.heads, c.start, c.end);
  const keys = (layer) => ({ ...c.keys[layer], data: Float32Array.from(c.keys[layer].data) });
  return Array.from(timing.scores(Float32Array.from(c.queries), c.dims, keys));
});
console.log(JSON.stringify({ aligner, voiced, scores }));
