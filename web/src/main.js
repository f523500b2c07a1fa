// The demo page: drives the worker, plays chunks as they arrive, measures speed.
// For automated tests it exposes window.__state ("loading" | "ready" | "generating" |
// "error"), __lastAudio (Float32Array of the last synthesis), __chunks, __stats, __voice.

import { encodeWav, parseWav } from "./audio.js";

const $ = (id) => document.getElementById(id);
const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });

let model = null; // info from the worker's "loaded" message
let audioContext = null;
let playhead = 0;
let job = null; // the synthesis in progress
let jobCounter = 0;

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

function load() {
  showError("");
  model = null;
  $("voice-file").disabled = true;
  $("random-weights").hidden = true;
  setState("loading");
  status(`Loading ${$("bundle-url").value}…`);
  worker.postMessage({ type: "load", url: $("bundle-url").value.trim(), precision: $("precision").value });
}

function readParams() {
  const number = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
  return { temperature: number("temperature"), lsdSteps: number("lsd-steps"), seed: number("seed") };
}

// Web Audio at the model's rate (the browser resamples to the device). Playback is best
// effort: without an audio device synthesis still runs and can be downloaded.
function startPlayback() {
  try {
    if (!audioContext || audioContext.sampleRate !== model.sampleRate) {
      audioContext?.close();
      audioContext = new AudioContext({ sampleRate: model.sampleRate });
    }
    audioContext.resume();
    playhead = audioContext.currentTime + 0.05;
  } catch (e) {
    audioContext = null;
    console.warn("audio playback unavailable:", e);
  }
}

function schedule(samples) {
  if (!audioContext) return;
  const buffer = audioContext.createBuffer(1, samples.length, model.sampleRate);
  buffer.copyToChannel(samples, 0);
  const source = audioContext.createBufferSource();
  source.buffer = buffer;
  source.connect(audioContext.destination);
  // Never schedule in the past: a late chunk starts now (an audible gap, not a skip).
  playhead = Math.max(playhead, audioContext.currentTime + 0.02);
  source.start(playhead);
  playhead += buffer.duration;
}

function play() {
  showError("");
  $("download").hidden = true;
  window.__lastAudio = null;
  window.__stats = null;
  window.__chunks = 0;
  startPlayback();
  job = { id: ++jobCounter, start: performance.now(), firstMs: null, pieces: [], length: 0 };
  ["stat-first", "stat-speed", "stat-audio", "stat-chunks"].forEach((id) => ($(id).textContent = "…"));
  setState("generating");
  status("Synthesizing…");
  worker.postMessage({ type: "generate", id: job.id, text: $("text").value, params: readParams() });
}

function stop() {
  worker.postMessage({ type: "stop" });
  audioContext?.suspend();
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
    $("voice-status").textContent = "Default voice (no prompt).";
    showError(e.message);
    setState("ready");
  }
}

worker.onmessage = ({ data }) => {
  switch (data.type) {
    case "progress":
      status(data.message);
      break;
    case "loaded":
      model = data.info;
      $("random-weights").hidden = !model.randomWeights;
      $("temperature").value = model.temperature;
      $("lsd-steps").value = model.lsdSteps;
      $("voice-file").disabled = false;
      status(`Loaded ${$("bundle-url").value} (${model.precision}, ${model.sampleRate} Hz) in ${(model.loadMs / 1000).toFixed(1)} s.`);
      window.__voice = null;
      $("voice-status").textContent = "Default voice (no prompt).";
      setState("ready");
      break;
    case "voice":
      window.__voice = data.info;
      $("voice-status").textContent = data.info
        ? `Voice: ${data.info.name}` + (data.info.ms ? ` (cloned in ${Math.round(data.info.ms)} ms)` : "")
        : "Default voice (no prompt).";
      setState("ready");
      break;
    case "chunk":
      if (!job || data.id !== job.id) return;
      job.firstMs ??= performance.now() - job.start;
      job.pieces.push(data.samples);
      job.length += data.samples.length;
      schedule(data.samples);
      $("stat-first").textContent = `${Math.round(job.firstMs)} ms`;
      $("stat-chunks").textContent = String(job.pieces.length);
      window.__chunks = job.pieces.length;
      break;
    case "done":
      if (job && data.id === job.id) finish("Done.");
      break;
    case "error":
      showError(data.message);
      if (data.during === "load") {
        status("No bundle loaded.");
        setState("error");
      } else {
        if (job) ["stat-first", "stat-speed", "stat-audio", "stat-chunks"].forEach((id) => ($(id).textContent = "–"));
        if (data.during.startsWith("voice")) $("voice-status").textContent = "Default voice (no prompt).";
        job = null;
        status("Ready.");
        setState("ready");
      }
      break;
  }
};

const query = new URLSearchParams(location.search);
if (query.has("bundle")) $("bundle-url").value = query.get("bundle");
if (query.has("precision")) $("precision").value = query.get("precision");
$("load").onclick = load;
$("play").onclick = play;
$("stop").onclick = stop;
$("voice-file").onchange = chooseVoice;
$("voice-clear").onclick = () => {
  $("voice-file").value = "";
  if (model) worker.postMessage({ type: "voice-clear" });
};
load();
