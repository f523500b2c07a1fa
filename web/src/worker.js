// Runs the engine off the page's thread. Messages in: load, voice-audio, voice-npz,
// voice-clear, generate, stop. Messages out: progress, loaded, voice, chunk, done, error.

import { ort, PocketTTS } from "./pocket-tts.js";

ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;

let tts = null;
let voice = null;
let generation = 0; // bumped by "stop": a running synthesis ends at its next chunk
let queue = Promise.resolve(); // messages run one at a time: ORT sessions are not reentrant

// A macrotask break, so that a "stop" message gets handled while a synthesis runs.
const breathe = () =>
  new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = resolve;
    channel.port2.postMessage(null);
  });

function describe(error) {
  return error?.message || String(error);
}

const handlers = {
  async load({ url, precision }) {
    tts = null;
    voice = null;
    const start = performance.now();
    tts = await PocketTTS.load(url, {
      precision,
      onProgress: (message) => postMessage({ type: "progress", message }),
    });
    const m = tts.manifest;
    postMessage({
      type: "loaded",
      info: {
        sampleRate: m.sample_rate,
        randomWeights: m.random_weights,
        notes: m.notes ?? [],
        voiceCloning: m.voice_cloning,
        precision: tts.precision,
        temperature: m.defaults.temperature,
        lsdSteps: m.defaults.decode_steps,
        source: m.source,
        loadMs: performance.now() - start,
      },
    });
  },

  async "voice-audio"({ channels, sampleRate, name }) {
    const start = performance.now();
    voice = await requireModel().voiceFromAudio(channels, sampleRate);
    postMessage({ type: "voice", info: { name, kind: "audio", ms: performance.now() - start } });
  },

  async "voice-npz"({ buffer, name }) {
    voice = await requireModel().loadVoice(buffer);
    postMessage({ type: "voice", info: { name, kind: "npz" } });
  },

  async "voice-clear"() {
    voice = null;
    postMessage({ type: "voice", info: null });
  },

  async generate({ id, text, params }) {
    const model = requireModel();
    const mine = ++generation;
    for await (const chunk of model.stream(text, voice, params)) {
      // A copy we own, so transferring it can never detach memory ORT still uses.
      const out = chunk.samples.slice();
      postMessage({ type: "chunk", id, samples: out, textChunkIndex: chunk.textChunkIndex }, [out.buffer]);
      await breathe();
      if (mine !== generation) return;
    }
    postMessage({ type: "done", id });
  },
};

function requireModel() {
  if (!tts) throw new Error("no bundle is loaded");
  return tts;
}

onmessage = ({ data }) => {
  if (data.type === "stop") {
    generation++;
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
