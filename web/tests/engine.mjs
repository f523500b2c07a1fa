// The JS engine in Node (onnxruntime-web's wasm backend), no browser: compares the fast-KV
// flow LM (flow_lm_step, preallocated buffers) with the contract graph (flow_lm_main) and
// writes samples for the caller to compare with the Python engine.
//
//   node web/tests/engine.mjs PLAN.json
//
// PLAN: {bundle: dir, precision, outDir, texts: {name: text}, voices: {name: npz path},
// timestamps: {texts: {name: text}, eosThresholds: [...]} (optional)}.
// Writes outDir/<mode>_<text>_<voice>.f32 (mode: step | contract) and prints
// {fastKv: bool, runs: [...names], voiceStates: {name: max |step - contract|}, words}.
// `words` (with timestamps, no voice, temperature 0): per "<name>#<index of the eos>",
// {samples, stream: the word events of stream() as [text, index, charStart, charEnd, start,
// end], pipeline: the same from latents() sent through structuredClone (as to the decoder
// worker) and decoded in blocks of 3 with a WordTimeline, generated: generate()'s words},
// plus `refused`: the contract-graph engine's error for timestamps.

import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

import { ort, PocketTTS } from "../src/pocket-tts.js";
import { WordTimeline } from "../src/timestamps.js";

ort.env.wasm.numThreads = 1;
// fetch() of file: URLs, which Node's fetch does not do.
const netFetch = globalThis.fetch;
globalThis.fetch = async (url) => {
  const u = new URL(url);
  if (u.protocol !== "file:") return netFetch(url);
  try {
    return new Response(readFileSync(fileURLToPath(u)));
  } catch {
    return new Response(null, { status: 404 });
  }
};

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));
const url = pathToFileURL(plan.bundle).href + "/";
const result = { runs: [], voiceStates: {} };
const engines = {
  step: await PocketTTS.load(url, { precision: plan.precision }),
  contract: await PocketTTS.load(url, { precision: plan.precision, fastKv: false }),
};
result.fastKv = engines.step.fastKv;
result.contractFastKv = engines.contract.fastKv;
for (const [mode, tts] of Object.entries(engines)) {
  const voices = { none: null };
  for (const [name, path] of Object.entries(plan.voices ?? {})) {
    const bytes = readFileSync(path);
    voices[name] = await tts.loadVoice(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  }
  if (plan.cloneFrom) {
    // A voice cloned in JS: its states come out of the step graph's buffers in step mode.
    const samples = new Float32Array(readFileSync(plan.cloneFrom.f32).buffer.slice(0));
    voices.cloned = await tts.voiceFromAudio([samples], plan.cloneFrom.sampleRate);
  }
  for (const [textName, text] of Object.entries(plan.texts)) {
    for (const [voiceName, voice] of Object.entries(voices)) {
      const audio = await tts.generate(text, voice, { temperature: 0 });
      const name = `${mode}_${textName}_${voiceName}`;
      writeFileSync(join(plan.outDir, `${name}.f32`), Buffer.from(audio.buffer));
      result.runs.push(name);
    }
  }
  if (voices.cloned) engines[mode].cloned = voices.cloned;
}
if (engines.step.cloned) {
  for (const [name, a] of Object.entries(engines.step.cloned.states)) {
    const b = engines.contract.cloned.states[name];
    let diff = a.dims.join() === b.dims.join() ? 0 : Infinity;
    for (let i = 0; diff !== Infinity && i < a.data.length; i++) {
      diff = Math.max(diff, Math.abs(Number(a.data[i]) - Number(b.data[i])));
    }
    result.voiceStates[name] = diff;
  }
}

const row = (w) => [w.text, w.index, w.charStart, w.charEnd, w.start, w.end];

// What the decoder worker does with the engine worker's latents.
async function pipelineWords(tts, text, params) {
  const timeline = new WordTimeline(tts.sampleRate);
  const events = [];
  let decoder = null;
  let block = [];
  let scores = [];
  const flush = async () => {
    if (block.length) events.push(...timeline.frames(await decoder.decode(block), scores));
    block = [];
    scores = [];
  };
  for await (const sent of tts.latents(text, null, params)) {
    const e = structuredClone(sent);
    if (e.latent === null) {
      await flush();
      events.push(...timeline.endChunk());
      continue;
    }
    if (e.first) {
      decoder = tts.newDecoder();
      timeline.beginChunk(e.units);
    }
    block.push(e.latent);
    scores.push(e.scores);
    if (block.length === 3) await flush();
  }
  return events.map(row);
}

if (plan.timestamps) {
  result.words = {};
  const tts = engines.step;
  for (const [name, text] of Object.entries(plan.timestamps.texts)) {
    for (const [i, eos] of plan.timestamps.eosThresholds.entries()) {
      const params = { temperature: 0, timestamps: true, eosThreshold: eos };
      const stream = [];
      let samples = 0;
      for await (const chunk of tts.stream(text, null, params)) {
        samples += chunk.samples.length;
        stream.push(...chunk.words.map(row));
      }
      const { words } = await tts.generate(text, null, params);
      const pipeline = await pipelineWords(tts, text, params);
      result.words[`${name}#${i}`] = { samples, stream, pipeline, generated: words.map(row) };
    }
  }
  try {
    await engines.contract.generate("Hello.", null, { timestamps: true });
    result.refused = null;
  } catch (e) {
    result.refused = `${e.name}: ${e.message}`;
  }
}
console.log(JSON.stringify(result));
