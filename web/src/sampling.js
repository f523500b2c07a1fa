// Latent sampling: the starting noise and the flow head's decode rule (runtime/sampling.py).
//
// Noise is N(0, temperature), truncated to [-noiseClamp, noiseClamp] when a clamp is set. The
// truncated normal is drawn by inverting its CDF (x = std sqrt2 erfinv(u), u uniform on
// +-erf(clamp / (std sqrt2))), so any clamp, however tiny, costs the same: no redraw loop
// that a tiny clamp could keep running forever.

import * as ort from "onnxruntime-web/wasm";

const SQRT2 = Math.SQRT2;
const TWO_OVER_SQRT_PI = 2 / Math.sqrt(Math.PI);

// erf for float64: Taylor series near 0 (exact for tiny x), Chebyshev erfc further out.
export function erf(x) {
  const a = Math.abs(x);
  if (a < 2) {
    let term = a;
    let sum = a;
    for (let n = 1; n < 60 && Math.abs(term) > 1e-17 * Math.abs(sum); n++) {
      term *= (-a * a) / n;
      sum += term / (2 * n + 1);
    }
    return Math.sign(x) * Math.min(1, TWO_OVER_SQRT_PI * sum);
  }
  // erfc by Numerical Recipes' Chebyshev fit (relative error < 1.2e-7): erfc(2) < 0.005.
  const t = 1 / (1 + 0.5 * a);
  const tail = t * Math.exp(-a * a - 1.26551223 + t * (1.00002368 + t * (0.37409196 +
    t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
    t * (-0.82215223 + t * 0.17087277)))))))));
  return Math.sign(x) * (1 - tail);
}

// Inverse of erf on (-1, 1): a logarithmic first guess, then Newton steps on erf.
export function erfinv(y) {
  if (y <= -1) return -Infinity;
  if (y >= 1) return Infinity;
  if (y === 0) return 0;
  const w = -Math.log((1 - y) * (1 + y)); // -ln(1 - y^2)
  const k = 0.147; // Winitzki's approximation as the first guess
  const first = 2 / (Math.PI * k) - w / 2;
  let x = Math.sign(y) * Math.sqrt(Math.sqrt(first * first + w / k) - first);
  if (Math.abs(y) < 1e-8) x = y / TWO_OVER_SQRT_PI; // erf(x) = 2x/sqrt(pi) there
  for (let i = 0; i < 4; i++) {
    const step = (erf(x) - y) / (TWO_OVER_SQRT_PI * Math.exp(-x * x));
    if (!Number.isFinite(step)) break;
    x -= step;
  }
  return x;
}

/** Starting noise of one latent: Float32Array(L), N(0, temperature), truncated if clamped. */
export function drawNoise(rng, length, temperature, noiseClamp) {
  const std = Math.sqrt(temperature);
  const x = new Float32Array(length);
  if (std === 0) return x;
  if (noiseClamp === null) {
    for (let i = 0; i < length; i++) x[i] = rng.normal() * std;
    return x;
  }
  const bound = erf(noiseClamp / (std * SQRT2));
  for (let i = 0; i < length; i++) {
    const v = (2 * rng.uniform() - 1) * bound;
    const value = erfinv(v) * std * SQRT2;
    x[i] = Math.max(-noiseClamp, Math.min(noiseClamp, value));
  }
  return x;
}

/**
 * The flow head's decode rule from noise `x` (Float32Array of L), one graph call per solver
 * step: `run(feeds)` runs flow_lm_flow. Returns the latent (Float32Array of L).
 */
export async function solveFlow(run, flowType, conditioning, x, steps) {
  const L = x.length;
  const head = async (times) => {
    const feeds = { c: conditioning, x: new ort.Tensor("float32", x, [1, L]) };
    for (const [name, value] of Object.entries(times)) {
      feeds[name] = new ort.Tensor("float32", Float32Array.of(value), [1, 1]);
    }
    return (await run(feeds)).flow_dir.data;
  };
  const n = steps;
  // x + dir / n in float32, as numpy computes it.
  const euler = (dir) => x.map((v, k) => v + Math.fround(dir[k] / n));
  switch (flowType) {
    case "lsd":
      for (let i = 0; i < n; i++) x = euler(await head({ s: i / n, t: (i + 1) / n }));
      return x;
    case "flow_matching":
      for (let i = 0; i < n; i++) x = euler(await head({ t: i / n }));
      return x;
    case "drifting":
      return Float32Array.from(await head({}));
    case "pointwise": {
      const dir = await head({});
      return x.map((v, k) => v + dir[k]);
    }
    default:
      throw new Error(`unknown flow head type ${flowType}`);
  }
}
