// Generated from src/pocket_tts_onnx/runtime/config.py (GenerationConfig) by
// scripts/write_web_parameters.py; tests/test_config.py fails when it is stale.
export const PARAMETERS = [
  {
    "name": "temperature",
    "js": "temperature",
    "kind": "float",
    "minimum": 0.0,
    "maximum": 2.0,
    "aboveMinimum": false,
    "optional": false,
    "manifestDefault": "temperature",
    "default": null,
    "help": "sampling temperature: 0 is deterministic, above ~1 the voice degrades"
  },
  {
    "name": "lsd_steps",
    "js": "lsdSteps",
    "kind": "int",
    "minimum": 1,
    "maximum": 64,
    "aboveMinimum": false,
    "optional": false,
    "manifestDefault": "decode_steps",
    "default": null,
    "help": "flow-head solver steps per frame (more: slower, smoother)"
  },
  {
    "name": "eos_threshold",
    "js": "eosThreshold",
    "kind": "float",
    "minimum": null,
    "maximum": null,
    "aboveMinimum": false,
    "optional": false,
    "manifestDefault": "eos_threshold",
    "default": null,
    "help": "end-of-speech logit threshold; inf disables EOS (the chunk runs to max_frames)"
  },
  {
    "name": "frames_after_eos",
    "js": "framesAfterEos",
    "kind": "int",
    "minimum": 0,
    "maximum": 10000,
    "aboveMinimum": false,
    "optional": true,
    "manifestDefault": "frames_after_eos",
    "default": null,
    "help": "frames generated after EOS (None: upstream's per-chunk guess)"
  },
  {
    "name": "noise_clamp",
    "js": "noiseClamp",
    "kind": "float",
    "minimum": 0.0,
    "maximum": null,
    "aboveMinimum": true,
    "optional": true,
    "manifestDefault": "noise_clamp",
    "default": null,
    "help": "truncate the sampling noise to +-this (None: untruncated)"
  },
  {
    "name": "seed",
    "js": "seed",
    "kind": "int",
    "minimum": 0,
    "maximum": 9223372036854775807,
    "aboveMinimum": false,
    "optional": true,
    "manifestDefault": null,
    "default": null,
    "help": "random seed; the same seed gives the same audio (None: fresh entropy)"
  },
  {
    "name": "max_frames",
    "js": "maxFrames",
    "kind": "int",
    "minimum": 1,
    "maximum": 10000,
    "aboveMinimum": false,
    "optional": true,
    "manifestDefault": null,
    "default": null,
    "help": "most frames (80 ms each) per text chunk (None: upstream's estimate from the chunk's length)"
  },
  {
    "name": "first_chunk_frames",
    "js": "firstChunkFrames",
    "kind": "int",
    "minimum": 1,
    "maximum": 250,
    "aboveMinimum": false,
    "optional": false,
    "manifestDefault": null,
    "default": 1,
    "help": "frames in the first streamed audio chunk (1: lowest latency)"
  },
  {
    "name": "timestamps",
    "js": "timestamps",
    "kind": "bool",
    "minimum": null,
    "maximum": null,
    "aboveMinimum": false,
    "optional": false,
    "manifestDefault": null,
    "default": false,
    "help": "word timestamps: audio chunks carry each word's start and end (bundles exported with timestamp heads)"
  }
];
