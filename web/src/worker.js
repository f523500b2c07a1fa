// The engine worker: text, flow LM, flow head (and, unless a decoder worker is attached,
// Mimi decoding). Messages in: load, voice-audio, voice-npz, voice-named, voice-clear,
// generate, stop, and "decoder-port" (a MessagePort to the decoder worker: latents go there,
// with their word-timestamp scores, so the flow LM and Mimi run in parallel as in the Python
// engine). Messages out: progress, loaded, voice, chunk ({samples, textChunkIndex, words}),
// done, error.

import { GRAPH_NAMES, ort, PocketTTS } from "./pocket-tts.js";
import { breathe, describe, sendChunk } from "./worker-common.js";

ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;

let tts = null;
let voice = null;
let decoderPort = null; // set: latents go to the decoder worker
let generation = 0; // bumped by "stop": a running synthesis ends at its next latent
let queue = Promise.resolve(); // messages run one at a time: ORT sessions are not reentrant

function voiceInfo(name, kind, ms = null) {
  return { name, kind, ms };
}

const handlers = {
  async load({ url, precision, threads = 1, device = "wasm", fastKv = true, kvSlack, spinning }) {
    tts = null;
    voice = null;
    ort.env.wasm.numThreads = threads;
    const start = performance.now();
    const graphs = decoderPort ? GRAPH_NAMES.filter((g) => g !== "mimi_decoder") : GRAPH_NAMES;
    tts = await PocketTTS.load(url, {
      precision,
      device,
      fastKv,
      kvSlack,
      spinning,
      graphs,
      onProgress: (message) => postMessage({ type: "progress", message }),
    });
    const m = tts.manifest;
    // The bundle's default voice is selected from the start, as the Python runtime does.
    if (tts.defaultVoice) voice = await tts.namedVoice(tts.defaultVoice);
    postMessage({
      type: "loaded",
      info: {
        sampleRate: m.sample_rate,
        randomWeights: m.random_weights,
        notes: m.notes ?? [],
        voiceCloning: m.voice_cloning,
        voices: tts.voices,
        defaultVoice: tts.defaultVoice,
        precision: tts.precision,
        fastKv: tts.fastKv,
        devices: tts.devices,
        // null when word timestamps can be asked for, else why not
        timestampsUnavailable: tts.timestampsUnavailable,
        temperature: m.defaults.temperature,
        lsdSteps: m.defaults.decode_steps,
        source: m.source,
        loadMs: performance.now() - start,
      },
    });
  },

  async "voice-audio"({ channels, sampleRate, name }) {
    const start = performance.now();
    voice = null;
    voice = await requireModel().voiceFromAudio(channels, sampleRate);
    postMessage({ type: "voice", info: voiceInfo(name, "audio", performance.now() - start) });
  },

  async "voice-npz"({ buffer, name }) {
    voice = null;
    voice = await requireModel().loadVoice(buffer);
    postMessage({ type: "voice", info: voiceInfo(name, "npz") });
  },

  async "voice-named"({ name }) {
    voice = null;
    voice = await requireModel().namedVoice(name);
    postMessage({ type: "voice", info: voiceInfo(name, "bundle") });
  },

  async "voice-clear"() {
    voice = null;
    postMessage({ type: "voice", info: null });
  },

  async generate({ id, text, params }) {
    const model = requireModel();
    const mine = ++generation;
    model.profile = {};
    if (decoderPort) {
      let sent = 0;
      const firstChunkFrames = params?.firstChunkFrames ?? 1;
      const timestamps = params?.timestamps === true;
      decoderPort.postMessage({ type: "start", id, firstChunkFrames, timestamps });
      for await (const event of model.latents(text, voice, params)) {
        decoderPort.postMessage({ type: "latent", id, ...event });
        // Let "stop" in now and then; the decoder worker runs meanwhile.
        if (++sent % 8 === 0) await breathe();
        if (mine !== generation) return;
      }
      decoderPort.postMessage({ type: "end", id, profile: model.profile });
      return;
    }
    for await (const chunk of model.stream(text, voice, params)) {
      sendChunk(id, chunk.samples, chunk.textChunkIndex, chunk.words);
      await breathe();
      if (mine !== generation) return;
    }
    postMessage({ type: "done", id, profile: model.profile });
  },
};

function requireModel() {
  if (!tts) throw new Error("no bundle is loaded");
  return tts;
}

onmessage = ({ data, ports }) => {
  if (data.type === "stop") {
    generation++;
    return;
  }
  if (data.type === "decoder-port") {
    decoderPort = ports[0];
    return;
  }
  queue = queue.then(async () => {
    try {
      await handlers[data.type](data);
    } catch (error) {
      postMessage({ type: "error", id: data.id, during: data.type, message: describe(error) });
    }
  });
};
