// The demo page: the form and its controls; drives the workers, plays chunks as they arrive
// (player.js), measures speed, and with "Word timestamps" highlights the word being spoken,
// on the playback clock (word-highlight.js).
// For automated tests it exposes window.__state ("loading" | "ready" | "generating" |
// "error"), __lastAudio (Float32Array of the last synthesis), __chunks, __stats, __voice,
// __words (the word events received) and __highlighted (indices of the words highlighted).
//
// Two workers by default: the engine (text, flow LM, flow head) sends latents straight to a
// decoder worker (Mimi), so both run at once. Query options: bundle, precision, threads
// (ONNX Runtime threads of the engine worker, default 1), dthreads (of the decoder worker,
// default 1), pipeline=0 (one worker), device=webgpu,
// fastkv=0 (the contract graph flow_lm_main even when the bundle has flow_lm_step),
// kvslack=N (spare rows when the fast-KV buffers grow; 0 doubles them), spin=0 (ONNX
// Runtime's idle threads do not spin), dmin=N (after the first chunk the decoder worker waits
// for N latents per Mimi call, default 1),
// frames=N (fixed length: maxFrames and no EOS, for benchmarks).

import { encodeWav, parseWav } from "./audio.js";
import { Player } from "./player.js";
import { WordHighlight } from "./word-highlight.js";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const options = {
  threads: Number(query.get("threads") ?? 1),
  decoderThreads: Number(query.get("dthreads") ?? 1),
  pipeline: query.get("pipeline") !== "0",
  device: query.get("device") ?? "wasm",
  frames: query.has("frames") ? Number(query.get("frames")) : null,
  fastKv: query.get("fastkv") !== "0",
  kvSlack: query.has("kvslack") ? Number(query.get("kvslack")) : undefined,
  spinning: query.get("spin") !== "0",
  decoderMinFrames: Number(query.get("dmin") ?? 1),
};
// WebGPU needs ONNX Runtime's WebGPU build: separate worker bundles (see build.mjs).
const gpu = options.device === "webgpu";
const worker = gpu
  ? new Worker(new URL("./worker-webgpu.js", import.meta.url), { type: "module" })
  : new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
let decoderWorker = null;
if (options.pipeline) {
  decoderWorker = gpu
    ? new Worker(new URL("./decoder-worker-webgpu.js", import.meta.url), { type: "module" })
    : new Worker(new URL("./decoder-worker.js", import.meta.url), { type: "module" });
  const channel = new MessageChannel();
  worker.postMessage({ type: "decoder-port" }, [channel.port1]);
  decoderWorker.postMessage({ type: "engine-port" }, [channel.port2]);
}
let loadsPending = 0; // workers still loading the bundle
let decoderDevices = {}; // execution provider of the decoder worker's session

let model = null; // info from the worker's "loaded" message
let job = null; // the synthesis in progress
let jobCounter = 0;
const player = new Player();
const highlight = new WordHighlight($("spoken"), player);

function setState(state) {
  window.__state = state;
  $("play").disabled = state !== "ready";
  $("stop").disabled = state !== "generating";
  $("load").disabled = state === "loading";
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
  window.__lastError = message || null;
}

function status(message) {
  $("status").textContent = message;
}

const NO_VOICE = "Voice: none (no prompt).";

// Forget the loaded bundle's voices: a new or failed load must never show the old ones.
function resetVoices() {
  const select = $("voice");
  select.replaceChildren(new Option("none (no voice prompt)", ""));
  select.disabled = true;
  $("voice-file").value = "";
  $("voice-file").disabled = true;
  $("voice-status").textContent = NO_VOICE;
  window.__voice = null;
}

function fillVoices(names, preselected) {
  const select = $("voice");
  select.replaceChildren(new Option("none (no voice prompt)", ""));
  for (const name of names) select.add(new Option(name, name));
  select.value = preselected ?? "";
  select.disabled = false;
}

function load() {
  showError("");
  model = null;
  resetVoices();
  $("timestamps").disabled = true;
  $("random-weights").hidden = true;
  setState("loading");
  status(`Loading ${$("bundle-url").value}…`);
  const message = {
    type: "load",
    url: $("bundle-url").value.trim(),
    precision: $("precision").value,
    threads: options.threads,
    device: options.device,
    fastKv: options.fastKv,
    kvSlack: options.kvSlack,
    spinning: options.spinning,
  };
  loadsPending = decoderWorker ? 2 : 1;
  decoderDevices = {};
  worker.postMessage(message);
  decoderWorker?.postMessage({
    ...message,
    threads: options.decoderThreads,
    minFrames: options.decoderMinFrames,
  });
}

function readParams() {
  const number = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
  const params = { temperature: number("temperature"), lsdSteps: number("lsd-steps"), seed: number("seed") };
  if (options.frames) Object.assign(params, { maxFrames: options.frames, eosThreshold: Infinity });
  if (wantsTimestamps()) params.timestamps = true;
  return params;
}

const wantsTimestamps = () => !$("timestamps").disabled && $("timestamps").checked;

function play() {
  showError("");
  $("download").hidden = true;
  window.__lastAudio = null;
  window.__stats = null;
  window.__chunks = 0;
  player.start(model.sampleRate);
  job = { id: ++jobCounter, start: performance.now(), firstMs: null, pieces: [], length: 0 };
  highlight.reset();
  if (wantsTimestamps()) {
    const id = job.id;
    highlight.start(id, $("text").value, () => job && job.id === id);
  }
  ["stat-first", "stat-speed", "stat-audio", "stat-chunks"].forEach((id) => ($(id).textContent = "…"));
  setState("generating");
  status("Synthesizing…");
  worker.postMessage({ type: "generate", id: job.id, text: $("text").value, params: readParams() });
}

function stop() {
  worker.postMessage({ type: "stop" });
  decoderWorker?.postMessage({ type: "stop", id: job?.id });
  player.suspend();
  highlight.stop();
  finish("Stopped.");
}

function finish(message) {
  if (!job) return;
  const audio = new Float32Array(job.length);
  job.pieces.reduce((offset, p) => (audio.set(p, offset), offset + p.length), 0);
  const seconds = audio.length / model.sampleRate;
  const elapsed = (performance.now() - job.start) / 1000;
  const stats = {
    firstChunkMs: job.firstMs,
    elapsedS: elapsed,
    audioS: seconds,
    realtimeFactor: seconds / elapsed,
    chunks: job.pieces.length,
    profile: job.profile ?? null,
  };
  $("stat-speed").textContent = `${stats.realtimeFactor.toFixed(1)}× realtime (${seconds.toFixed(2)} s of audio in ${elapsed.toFixed(2)} s)`;
  $("stat-audio").textContent = `${seconds.toFixed(2)} s at ${model.sampleRate} Hz`;
  const url = URL.createObjectURL(new Blob([encodeWav(audio, model.sampleRate)], { type: "audio/wav" }));
  const link = $("download");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = url;
  link.hidden = audio.length === 0;
  window.__lastAudio = audio;
  window.__chunks = job.pieces.length;
  window.__stats = stats;
  job = null;
  status(message);
  setState("ready");
}

async function decodeVoiceFile(file) {
  const buffer = await file.arrayBuffer();
  // WAV is read directly, at its own rate, so the resampling is the engine's (scipy's);
  // other formats go through the browser's decoder, which resamples to the model rate.
  const wav = parseWav(buffer);
  if (wav) return wav;
  const context = new OfflineAudioContext(1, 1, model.sampleRate);
  let decoded;
  try {
    decoded = await context.decodeAudioData(buffer);
  } catch {
    throw new Error(`cannot decode ${file.name}: not an audio file this browser can read`);
  }
  const channels = [];
  for (let c = 0; c < decoded.numberOfChannels; c++) channels.push(decoded.getChannelData(c));
  return { channels, sampleRate: decoded.sampleRate };
}

async function chooseVoice() {
  const file = $("voice-file").files[0];
  if (!file || !model) return;
  showError("");
  setState("loading");
  $("voice-status").textContent = `Preparing voice from ${file.name}…`;
  try {
    if (file.name.toLowerCase().endsWith(".npz")) {
      const buffer = await file.arrayBuffer();
      worker.postMessage({ type: "voice-npz", buffer, name: file.name }, [buffer]);
    } else {
      const { channels, sampleRate } = await decodeVoiceFile(file);
      worker.postMessage({ type: "voice-audio", channels, sampleRate, name: file.name });
    }
  } catch (e) {
    $("voice").value = "";
    $("voice-status").textContent = NO_VOICE;
    worker.postMessage({ type: "voice-clear" });
    showError(e.message);
  }
}

// The dropdown shows the voice in use: a bundle voice, "none", or the uploaded file.
function showVoiceChoice(info) {
  const select = $("voice");
  select.querySelector('option[value="__upload__"]')?.remove();
  if (info && info.kind !== "bundle") {
    select.add(new Option(`${info.name} (uploaded)`, "__upload__"));
    select.value = "__upload__";
  } else {
    select.value = info ? info.name : "";
  }
}

function chooseNamedVoice() {
  if (!model) return;
  showError("");
  $("voice-file").value = "";
  const name = $("voice").value;
  if (name === "__upload__") return;
  $("voice").querySelector('option[value="__upload__"]')?.remove();
  setState("loading");
  $("voice-status").textContent = name ? `Loading voice ${name}…` : NO_VOICE;
  worker.postMessage(name ? { type: "voice-named", name } : { type: "voice-clear" });
}

function loaded() {
  window.__model = model;
  $("random-weights").hidden = !model.randomWeights;
  $("temperature").value = model.temperature;
  $("lsd-steps").value = model.lsdSteps;
  $("voice-file").disabled = !model.voiceCloning;
  // Word timestamps need a bundle with heads (a typed error says why otherwise).
  $("timestamps").disabled = model.timestampsUnavailable !== null;
  $("timestamps-label").title = model.timestampsUnavailable ?? "";
  fillVoices(model.voices, model.defaultVoice);
  window.__voice = model.defaultVoice ? { name: model.defaultVoice, kind: "bundle" } : null;
  $("voice-status").textContent = model.defaultVoice ? `Voice: ${model.defaultVoice}` : NO_VOICE;
  status(`Loaded ${$("bundle-url").value} (${model.precision}, ${model.sampleRate} Hz) in ${(model.loadMs / 1000).toFixed(1)} s.`);
  setState("ready");
}

function failed(data) {
  showError(data.message);
  if (data.during === "load") {
    model = null;
    loadsPending = 0;
    resetVoices();
    status("No bundle loaded.");
    setState("error");
    return;
  }
  if (job) ["stat-first", "stat-speed", "stat-audio", "stat-chunks"].forEach((id) => ($(id).textContent = "–"));
  if (data.during.startsWith("voice")) {
    $("voice").value = "";
    $("voice-status").textContent = NO_VOICE;
    window.__voice = null;
  }
  if (job) {
    worker.postMessage({ type: "stop" });
    decoderWorker?.postMessage({ type: "stop", id: job.id });
    highlight.stop();
  }
  job = null;
  status("Ready.");
  setState("ready");
}

function onMessage({ data }) {
  switch (data.type) {
    case "progress":
      status(data.message);
      break;
    case "loaded":
      if (loadsPending <= 0) break; // a late answer to a load that already failed
      if (data.info) model = { ...data.info, devices: { ...data.info.devices, ...decoderDevices } };
      if (data.devices) decoderDevices = data.devices; // from the decoder worker
      if (data.devices && model) model.devices = { ...model.devices, ...data.devices };
      if (--loadsPending === 0 && model && window.__state === "loading") loaded();
      break;
    case "voice":
      window.__voice = data.info;
      $("voice-status").textContent = data.info
        ? `Voice: ${data.info.name}` + (data.info.ms ? ` (cloned in ${Math.round(data.info.ms)} ms)` : "")
        : NO_VOICE;
      showVoiceChoice(data.info);
      setState("ready");
      break;
    case "chunk":
      if (!job || data.id !== job.id) return;
      if (data.samples.length) {
        const at = player.schedule(data.samples, model.sampleRate);
        highlight.placed(job.length / model.sampleRate, at);
        job.pieces.push(data.samples);
        job.length += data.samples.length;
      }
      highlight.add(data.words);
      if (!data.samples.length) break; // the last word's end, after the audio
      job.firstMs ??= performance.now() - job.start;
      $("stat-first").textContent = `${Math.round(job.firstMs)} ms`;
      $("stat-chunks").textContent = String(job.pieces.length);
      window.__chunks = job.pieces.length;
      break;
    case "done":
      if (job && data.id === job.id) {
        job.profile = data.profile ?? null;
        finish("Done.");
      }
      break;
    case "error":
      if (data.during !== "load" && data.id !== undefined && job && data.id !== job.id) break;
      failed(data);
      break;
  }
}

worker.onmessage = onMessage;
if (decoderWorker) decoderWorker.onmessage = onMessage;

if (query.has("bundle")) $("bundle-url").value = query.get("bundle");
if (query.has("precision")) $("precision").value = query.get("precision");
$("load").onclick = load;
$("play").onclick = play;
$("stop").onclick = stop;
$("voice-file").onchange = chooseVoice;
$("voice").onchange = chooseNamedVoice;
load();
