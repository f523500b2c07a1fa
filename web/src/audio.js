// Voice-prompt preparation and audio helpers, mirroring src/pocket_tts_onnx/runtime/audio.py:
// the prompt must reach the Mimi encoder as the Python runtime feeds it (mixdown, scipy's
// resample_poly, end_on_pause), otherwise the cloned voice drifts from the reference.

export class VoiceError extends Error {
  constructor(message) {
    super(message);
    this.name = "VoiceError";
  }
}

/** Mean of channels ([Float32Array, ...]) accumulated in float32, as numpy's mean does. */
export function mixdown(channels) {
  if (channels.length === 1) return Float32Array.from(channels[0]);
  const n = channels[0].length;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let sum = 0;
    for (const ch of channels) sum = Math.fround(sum + ch[i]);
    out[i] = sum / channels.length;
  }
  return out;
}

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

// Modified Bessel function I0 by its power series; converges fast for the Kaiser beta of 5.
function besselI0(x) {
  let sum = 1;
  let term = 1;
  const q = (x * x) / 4;
  for (let k = 1; k < 500; k++) {
    term *= q / (k * k);
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return sum;
}

// scipy.signal.firwin(2 * half + 1, 1 / maxRate, window=("kaiser", 5.0)), scaled to unit DC gain.
function lowpass(half, cutoff) {
  const taps = 2 * half + 1;
  const h = new Float64Array(taps);
  const alpha = (taps - 1) / 2;
  const i0beta = besselI0(5.0);
  let total = 0;
  for (let n = 0; n < taps; n++) {
    const m = n - alpha;
    const x = cutoff * m;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    const r = (n - alpha) / alpha;
    const window = besselI0(5.0 * Math.sqrt(1 - r * r)) / i0beta;
    h[n] = cutoff * sinc * window;
    total += h[n];
  }
  for (let n = 0; n < taps; n++) h[n] /= total;
  return h;
}

/** scipy.signal.resample_poly(x, up, down) for float32 x, with the default Kaiser filter. */
export function resamplePoly(x, up, down) {
  const g = gcd(up, down);
  up /= g;
  down /= g;
  if (up === 1 && down === 1) return Float32Array.from(x);
  const nIn = x.length;
  const nOut = Math.ceil((nIn * up) / down);
  const maxRate = Math.max(up, down);
  const half = 10 * maxRate;
  // Taps rounded to float32 then scaled by `up` in float32, as scipy does for float32 input.
  const h = Float32Array.from(lowpass(half, 1 / maxRate)).map((v) => v * up);
  const prePad = down - (half % down);
  const preRemove = Math.floor((half + prePad) / down);
  const out = new Float32Array(nOut);
  for (let k = 0; k < nOut; k++) {
    // Output sample k is the full convolution of the zero-stuffed input with [0]*prePad + h
    // at position t, keeping only the taps that land on real input samples.
    const t = (k + preRemove) * down - prePad;
    let acc = 0;
    let first = t % up;
    if (first < 0) first += up;
    for (let i = first; i < h.length; i += up) {
      const j = (t - i) / up;
      if (j < 0) break;
      if (j < nIn) acc += h[i] * x[j];
    }
    out[k] = acc;
  }
  return out;
}

/** Make a prompt end on exactly `pauseSec` of silence (upstream's end_on_pause). */
export function endOnPause(wav, sampleRate, pauseSec = 0.08, fadeSec = 0.02, floorDb = 35.0) {
  const frame = Math.max(1, Math.trunc(0.02 * sampleRate));
  const nFrames = Math.floor(wav.length / frame);
  if (nFrames === 0) return Float32Array.from(wav);
  const db = new Float64Array(nFrames);
  let maxDb = -Infinity;
  for (let f = 0; f < nFrames; f++) {
    let sum = 0;
    for (let i = f * frame; i < (f + 1) * frame; i++) sum += wav[i] * wav[i];
    db[f] = 20 * Math.log10(Math.sqrt(sum / frame) + 1e-12);
    maxDb = Math.max(maxDb, db[f]);
  }
  let last = nFrames - 1;
  while (!(db[last] > maxDb - floorDb)) last--;
  const end = (last + 1) * frame;
  const pause = Math.trunc(pauseSec * sampleRate);
  const out = new Float32Array(end + pause);
  out.set(wav.subarray(0, end));
  const fade = Math.min(Math.trunc(fadeSec * sampleRate), end);
  if (fade > 0) {
    // np.linspace(1, 0, fade, dtype=float32): start + i * step, last value exactly 0.
    const step = fade > 1 ? -1 / (fade - 1) : 0;
    for (let i = 0; i < fade; i++) {
      out[end - fade + i] *= Math.fround(i === fade - 1 && fade > 1 ? 0 : 1 + i * step);
    }
  }
  return out;
}

/** Channels + rate -> the float32 prompt the Mimi encoder expects (prepare_voice_audio). */
export function prepareVoiceAudio(channels, sampleRate, targetRate, minSamples = 2) {
  if (!Number.isInteger(sampleRate) || sampleRate <= 0) {
    throw new VoiceError(`voice audio sample rate must be a positive integer, got ${sampleRate}`);
  }
  const mono = mixdown(channels);
  if (mono.length < Math.max(1, minSamples)) {
    throw new VoiceError(
      `voice audio is too short: ${mono.length} sample(s) at ${sampleRate} Hz, ` +
        `at least ${Math.max(1, minSamples)} needed`,
    );
  }
  const bad = mono.reduce((n, v) => n + (Number.isFinite(v) ? 0 : 1), 0);
  if (bad) throw new VoiceError(`voice audio contains ${bad} NaN/Inf sample(s)`);
  const resampled = sampleRate === targetRate ? mono : resamplePoly(mono, targetRate, sampleRate);
  if (!resampled.some((v) => v !== 0)) {
    console.warn("voice audio is silent; the generated voice will be arbitrary");
  }
  return endOnPause(resampled, targetRate);
}

/** The 5 ms fade-in on the first samples of a fresh decoder (upstream, fade_in). */
export function fadeIn(audio, sampleRate, seconds = 0.005) {
  const out = Float32Array.from(audio);
  // manifest.defaults.fade_in_seconds; the epsilon keeps 24000 * 0.005 at 120, not 119.
  const n = Math.floor(sampleRate * seconds + 1e-9);
  const step = n > 1 ? 1 / (n - 1) : 0;
  for (let i = 0; i < Math.min(n, out.length); i++) {
    out[i] *= Math.fround(i === n - 1 ? 1 : i * step);
  }
  return out;
}

/** Parse a RIFF/WAVE file (PCM 8/16/24/32-bit or IEEE float) to float32 channels, scaled
 * like libsndfile (int16 / 32768, ...), so the Python runtime reads the same numbers. */
export function parseWav(buffer) {
  const view = new DataView(buffer);
  const tag = (o) => String.fromCharCode(...new Uint8Array(buffer, o, 4));
  if (buffer.byteLength < 12 || tag(0) !== "RIFF" || tag(8) !== "WAVE") return null;
  let fmt = null;
  let data = null;
  for (let o = 12; o + 8 <= buffer.byteLength; ) {
    const id = tag(o);
    const size = view.getUint32(o + 4, true);
    if (id === "fmt ") {
      let format = view.getUint16(o + 8, true);
      if (format === 0xfffe) format = view.getUint16(o + 32, true); // extensible: sub-format
      fmt = {
        format,
        channels: view.getUint16(o + 10, true),
        rate: view.getUint32(o + 12, true),
        bits: view.getUint16(o + 22, true),
      };
    } else if (id === "data") {
      data = { offset: o + 8, size: Math.min(size, buffer.byteLength - o - 8) };
    }
    o += 8 + size + (size % 2);
  }
  if (!fmt || !data) throw new VoiceError("the WAV file has no fmt or data chunk");
  const { format, channels, rate, bits } = fmt;
  const width = bits / 8;
  const frames = Math.floor(data.size / (width * channels));
  if (frames === 0) throw new VoiceError("the WAV file contains no samples");
  const read = {
    "1:8": (o) => (view.getUint8(o) - 128) / 128,
    "1:16": (o) => view.getInt16(o, true) / 32768,
    "1:24": (o) => ((view.getUint8(o) | (view.getUint8(o + 1) << 8) | (view.getInt8(o + 2) << 16)) / 8388608),
    "1:32": (o) => view.getInt32(o, true) / 2147483648,
    "3:32": (o) => view.getFloat32(o, true),
    "3:64": (o) => view.getFloat64(o, true),
  }[`${format}:${bits}`];
  if (!read) throw new VoiceError(`unsupported WAV encoding (format ${format}, ${bits} bits)`);
  const out = Array.from({ length: channels }, () => new Float32Array(frames));
  for (let i = 0; i < frames; i++) {
    for (let c = 0; c < channels; c++) {
      out[c][i] = read(data.offset + (i * channels + c) * width);
    }
  }
  return { channels: out, sampleRate: rate };
}

/** Mono float samples -> 16-bit PCM WAV bytes (clip, scale by 32767, truncate: write_wav). */
export function encodeWav(samples, sampleRate) {
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(buffer);
  const text = (o, s) => [...s].forEach((c, i) => view.setUint8(o + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true);
  view.setUint16(22, 1, true);
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const v = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + i * 2, Math.trunc(Math.fround(v * 32767)), true);
  }
  return buffer;
}
