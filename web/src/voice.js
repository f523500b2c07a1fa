// Voice files (.npz written by `pocket-tts-onnx voice` / Voice.save): the flow LM's states
// after the voice prompt, checked against the model before they are used, so a voice made
// for another model or a broken file is a VoiceError, never wrong audio.

import * as ort from "onnxruntime-web/wasm";

import { VoiceError } from "./audio.js";
import { readNpz } from "./npz.js";

export const VOICE_FORMAT = "pocket-tts-onnx voice v1";

/** Parse a voice file into {states, modelId}: every state of `stateSpecs` (flow_lm_main's)
 * with its shape, dtype and finite values; with `checkModel`, made for `modelId`. */
export async function readVoice(buffer, stateSpecs, modelId, checkModel = true) {
  let parsed;
  try {
    parsed = await readNpz(buffer);
  } catch (e) {
    throw new VoiceError(`cannot read the voice file: ${e.message}`);
  }
  if (parsed.metadata.format !== VOICE_FORMAT) {
    throw new VoiceError("this .npz is not a pocket-tts-onnx voice file");
  }
  const states = {};
  for (const spec of stateSpecs) {
    const got = parsed.arrays[spec.name];
    if (!got) throw new VoiceError(`the voice lacks state ${spec.name}: not a voice for this model`);
    const ok =
      got.shape.length === spec.shape.length &&
      spec.shape.every((d, i) => typeof d === "string" || d === got.shape[i]) &&
      got.dtype === spec.dtype;
    if (!ok) {
      throw new VoiceError(
        `voice state ${spec.name} has shape [${got.shape}] ${got.dtype}, this model expects ` +
          `[${spec.shape}] ${spec.dtype}: the voice was made for a different model`,
      );
    }
    if (got.dtype === "float32" && !got.data.every(Number.isFinite)) {
      throw new VoiceError(`voice state ${spec.name} holds NaN or Inf: the voice file is broken`);
    }
    states[spec.name] = new ort.Tensor(got.dtype, got.data, got.shape);
  }
  const voiceModel = parsed.metadata.model_id ?? "";
  if (checkModel && voiceModel !== modelId) {
    throw new VoiceError(
      `the voice was computed with another model (id ${voiceModel.slice(0, 12)}..., this bundle ` +
        `is ${modelId.slice(0, 12)}...): recompute it from audio for this bundle`,
    );
  }
  return { states, modelId: voiceModel };
}
