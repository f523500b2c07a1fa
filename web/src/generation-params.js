// Generation parameters by their camelCase names, checked against the one parameter list
// (parameters.js, generated from Python's GenerationConfig): same defaults, same limits, and
// the same typed errors naming the parameter.

import { maxDecodeFrames } from "./decoder.js";
import { PARAMETERS } from "./parameters.js";
import { InvalidInputError } from "./text.js";
import { TimestampsUnavailableError } from "./timestamps.js";

/** The parameters of one synthesis, null/undefined taking the manifest's defaults.
 * `timestampsUnavailable()`: why `timestamps: true` cannot be given, or null. */
export function checkParams({ decodeFrames = null, ...given }, manifest, timestampsUnavailable) {
  const d = manifest.defaults;
  const known = new Set(PARAMETERS.map((q) => q.js));
  const unknown = Object.keys(given).filter((k) => !known.has(k));
  if (unknown.length) throw new InvalidInputError(`unknown generation parameter(s) ${unknown}`);
  const p = { decodeFrames: decodeFrames ?? maxDecodeFrames(manifest) };
  for (const q of PARAMETERS) {
    const value = given[q.js] ?? (q.manifestDefault ? d[q.manifestDefault] : q.default);
    p[q.js] = value;
    if (value === null && q.optional) continue;
    if (q.kind === "bool") {
      if (typeof value !== "boolean") {
        throw new InvalidInputError(`${q.js} must be true or false, got ${value}`);
      }
      continue;
    }
    const number = typeof value === "number" && !Number.isNaN(value);
    let ok = number && (q.kind === "float" || Number.isInteger(value));
    if (ok && q.minimum !== null) ok = q.aboveMinimum ? value > q.minimum : value >= q.minimum;
    if (ok && q.maximum !== null) ok = value <= q.maximum;
    if (!ok) {
      const what = q.kind === "int" ? "an integer" : "a number";
      const bounds = [
        q.minimum !== null ? `${q.aboveMinimum ? ">" : ">="} ${q.minimum}` : null,
        q.maximum !== null ? `<= ${q.maximum}` : null,
      ].filter(Boolean);
      const range = bounds.length ? ` ${bounds.join(" and ")}` : "";
      throw new InvalidInputError(
        `${q.js} must be ${what}${range}${q.optional ? " or null" : ""}, got ${value}`,
      );
    }
  }
  const unavailable = p.timestamps ? timestampsUnavailable() : null;
  if (unavailable) throw new TimestampsUnavailableError(unavailable);
  // More latents than max_decode_frames are decoded in several calls of at most that many.
  if (!Number.isInteger(p.decodeFrames) || p.decodeFrames < 1 || p.decodeFrames > 1000) {
    throw new InvalidInputError(`decodeFrames must be an integer in 1..1000, got ${p.decodeFrames}`);
  }
  return p;
}
