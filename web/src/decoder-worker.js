// The decoder worker: Mimi decoding in parallel with the engine worker's flow LM, as the
// Python engine's stream() overlaps them in two threads. Latents arrive on a MessagePort
// from the engine worker; audio chunks go to the page. Like the Python consumer, a text
// chunk's first audio waits for `firstChunkFrames` latents, later calls take whatever is
// ready (at most max_decode_frames per Mimi call, see decoder.js). With word timestamps the
// latents come with their scores and the word events are decided here, where the audio is
// (timestamps.js WordTimeline), and sent with the chunks.
//
// Messages in (page): load, stop, "engine-port". Out: loaded, chunk ({samples,
// textChunkIndex, words}), done, error.

import { maxDecodeFrames } from "./decoder.js";
import { ort, PocketTTS } from "./pocket-tts.js";
import { WordTimeline } from "./timestamps.js";
import { breathe, describe, sendChunk } from "./worker-common.js";

ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;

let tts = null;
let pending = []; // latent/end events not decoded yet
let running = false;
const stopped = new Set(); // ids of stopped syntheses
let job = null; // {id, decoder, block, scores, need, index, firstFrames, timeline}
let minFrames = 1; // latents per Mimi call after the first chunk (the page's dmin)

async function flush() {
  if (job.block.length) {
    const samples = await job.decoder.decode(job.block);
    const words = job.timeline ? job.timeline.frames(samples, job.scores) : [];
    sendChunk(job.id, samples, job.index, words);
    job.block = [];
    job.scores = [];
    job.need = Math.min(minFrames, maxDecodeFrames(tts.manifest));
  }
}

// Decode what has arrived, as the Python consumer: every event already posted is taken in (up
// to a full block) before each Mimi call, so blocks grow when the decoder falls behind and
// stay small, for latency, when it keeps up.
async function drain() {
  if (running) return;
  running = true;
  try {
    const max = maxDecodeFrames(tts.manifest);
    while (pending.length) {
      await breathe(); // receive every latent already posted
      while (pending.length && !(job && job.block.length >= max)) {
        const e = pending.shift();
        if (stopped.has(e.id)) continue;
        if (e.type === "start") {
          tts.profile = {};
          const first = e.firstChunkFrames;
          const timeline = e.timestamps ? new WordTimeline(tts.sampleRate) : null;
          job = {
            id: e.id, decoder: null, block: [], scores: [], need: first, index: 0,
            firstFrames: first, timeline,
          };
        } else if (!job || job.id !== e.id) {
          continue; // a synthesis this worker was told to drop
        } else if (e.type === "end") {
          await flush();
          postMessage({ type: "done", id: e.id, profile: { ...e.profile, ...tts.profile } });
          job = null;
        } else if (e.latent === null) {
          await flush();
          const words = job.timeline ? job.timeline.endChunk() : [];
          if (words.length) sendChunk(job.id, new Float32Array(0), job.index, words);
        } else {
          if (e.first) {
            await flush();
            job.decoder = tts.newDecoder();
            job.need = job.firstFrames;
            job.index = e.textChunkIndex;
            job.timeline?.beginChunk(e.units);
          }
          job.block.push(e.latent);
          job.scores.push(e.scores);
        }
      }
      if (job && job.block.length && job.block.length >= job.need) await flush();
    }
  } catch (error) {
    postMessage({ type: "error", id: job?.id, during: "generate", message: describe(error) });
    if (job) stopped.add(job.id);
    job = null;
  } finally {
    running = false;
  }
}

onmessage = async ({ data, ports }) => {
  if (data.type === "engine-port") {
    ports[0].onmessage = ({ data: event }) => {
      pending.push(event);
      drain();
    };
  } else if (data.type === "stop") {
    if (job) stopped.add(job.id);
    if (data.id !== undefined) stopped.add(data.id);
    pending = [];
    job = null;
  } else if (data.type === "load") {
    tts = null;
    try {
      ort.env.wasm.numThreads = data.threads ?? 1;
      minFrames = Math.max(1, Math.min(data.minFrames ?? 1, 64));
      tts = await PocketTTS.load(data.url, {
        precision: data.precision,
        device: data.device,
        spinning: data.spinning,
        graphs: ["mimi_decoder"],
      });
      postMessage({ type: "loaded", devices: tts.devices });
    } catch (error) {
      postMessage({ type: "error", during: "load", message: describe(error) });
    }
  }
};
