"""sherpa-onnx's Pocket TTS call protocol, replayed in Python (a helper, not a test module).

Taken from sherpa-onnx 2.0.1's Pocket TTS (offline-tts-pocket-impl.h): states passed by
position (inputs 0-1 of flow_lm_main are sequence and text_embeddings, input 0 of
mimi_decoder is the latent, states follow in the order of the outputs after the first two /
the first one), voice then text prompted with an empty sequence, a NaN BOS, one latent per
step, and the decoder fed 15 frames at a time. Shapes come from the sessions, as sherpa-onnx
reads them, and are checked against the manifest's graph contract.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from pocket_tts_onnx.manifest import Manifest
from pocket_tts_onnx.specs import GRAPH_NAMES

_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def zero_state(arg: ort.NodeArg, length: int) -> np.ndarray:
    """sherpa-onnx's CreateZeroTensorLike with `length` instead of 1 for dynamic axes."""
    shape = [d if isinstance(d, int) and d >= 0 else length for d in arg.shape]
    return np.zeros(shape, dtype=_DTYPES[arg.type])


def _check_contract(manifest: Manifest, name: str, session: ort.InferenceSession) -> None:
    spec = manifest.graphs[name].spec
    assert [i.name for i in session.get_inputs()] == [t.name for t in spec.all_inputs], name
    assert [o.name for o in session.get_outputs()] == [t.name for t in spec.all_outputs], name
    for arg, t in zip(session.get_inputs(), spec.all_inputs, strict=True):
        fixed = [d if isinstance(d, int) else None for d in t.shape]
        assert [d if isinstance(d, int) else None for d in arg.shape] == fixed, (name, t.name)


class _Positional:
    """A session called the way sherpa-onnx calls it: inputs and outputs by position."""

    def __init__(self, session: ort.InferenceSession):
        self.session = session
        self.inputs = session.get_inputs()
        self.names = [i.name for i in self.inputs]

    def __call__(self, *values: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.names, values, strict=True)))


def replay_sherpa_protocol(
    bundle: Path,
    *,
    precision: str = "fp32",
    state_length: int = 1,
    voice_audio: np.ndarray | None = None,
    token_ids: list[int],
    steps: int = 20,
    decode_steps: int = 1,
    eos_threshold: float = -4.0,
    frames_after_eos: int | None = None,
    decoder_chunk: int = 15,
) -> dict[str, np.ndarray]:
    """Run the bundle with sherpa-onnx's protocol at temperature 0 and return every output.

    With `frames_after_eos` set, generation stops like sherpa-onnx's loop (the first step
    whose eos_logit exceeds `eos_threshold`, counted only if it is not step 0); otherwise
    exactly `steps` latents are made. The flow head runs `decode_steps` Euler/LSD steps from
    zero noise (s = i/n, t = s + 1/n for lsd; t = s for flow matching)."""
    manifest = Manifest.load(bundle)
    sessions = {n: _session(bundle / manifest.graphs[n].files[precision]) for n in GRAPH_NAMES}
    for name in ("flow_lm_main", "mimi_decoder"):
        _check_contract(manifest, name, sessions[name])
    lm_main = _Positional(sessions["flow_lm_main"])
    decoder = _Positional(sessions["mimi_decoder"])
    L, D = manifest.latent_dim, manifest.d_model

    states = [zero_state(arg, state_length) for arg in lm_main.inputs[2:]]
    conditioning, eos = [], []

    def step(sequence, text):
        nonlocal states
        out = lm_main(sequence, text, *states)
        states = out[2:]
        conditioning.append(out[0][0])
        eos.append(float(out[1].reshape(-1)[0]))
        return out[0]

    empty_seq = np.zeros((1, 0, L), np.float32)
    if voice_audio is not None:
        latents = sessions["mimi_encoder"].run(None, {"audio": voice_audio[None, None]})[0]
        step(empty_seq, latents.astype(np.float32))
    ids = np.asarray(token_ids, np.int64)[None]
    step(empty_seq, sessions["text_conditioner"].run(None, {"token_ids": ids})[0])
    prompt_calls = len(eos)

    flow = sessions["flow_lm_flow"]
    times = manifest.flow_time_inputs
    empty_text = np.zeros((1, 0, D), np.float32)
    sequence = np.full((1, 1, L), np.nan, np.float32)
    generated, eos_step = [], -1
    for i in range(steps):
        c = step(sequence, empty_text)
        if eos_step < 0 and eos[-1] > eos_threshold:
            eos_step = i
        if frames_after_eos is not None and eos_step > 0 and i >= eos_step + frames_after_eos:
            break
        x = np.zeros((1, L), np.float32)
        for j in range(decode_steps):
            s, t = j / decode_steps, (j + 1) / decode_steps
            feed = {"c": c, "x": x}
            feed.update({n: np.full((1, 1), {"s": s, "t": t}[n], np.float32) for n in times})
            if times == ("t",):  # flow matching: velocity at the start of the interval
                feed["t"] = np.full((1, 1), s, np.float32)
            x = x + flow.run(None, feed)[0] / decode_steps
        generated.append(x[0])
        sequence = x[None]

    dec_states = [zero_state(arg, state_length) for arg in decoder.inputs[1:]]
    audio = []
    latents = np.asarray(generated, np.float32)
    for start in range(0, len(latents), decoder_chunk):
        out = decoder(latents[None, start : start + decoder_chunk], *dec_states)
        dec_states = out[1:]
        audio.append(out[0].reshape(-1))
    return {
        "conditioning": np.asarray(conditioning),
        "eos_logit": np.asarray(eos),
        "prompt_calls": np.asarray(prompt_calls),
        "latents": latents,
        "audio": np.concatenate(audio) if audio else np.zeros(0, np.float32),
    }
