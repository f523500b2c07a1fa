"""Full-size real-download path, offline: the README's commands on a filled hub cache.

For each language: a random-weight model of the shipped config is put on a local Hugging Face
cache in the real layout (tests/hub_cache.py: model.safetensors, tokenizer.json, voice
.safetensors made by upstream's own code), then, with HF_HUB_CACHE + HF_HUB_OFFLINE=1:

    python export.py --quantize [--language L]        (the README's real command)
    pocket-tts-onnx say "..." --voice DEFAULT         (and the default voice with no --voice)
    pocket-tts generate --voice DEFAULT ...            (upstream, same cache, temperature 0)

and the two WAVs are compared sample by sample. Defaults: english (alba) and italian
(giovanni, its own default voice). Several GB of disk and a few minutes per language; the test
suite runs the same path on english_2m_2026-10 (tests/test_hub.py).
RANDOM WEIGHTS: the audio is noise, not speech.

    python scripts/hub_end_to_end.py [--languages english,italian] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from hub_cache import fill_hub_cache, hub_env  # noqa: E402

TEXT = "Hello world."


# pocket-tts 4.0.1's `generate` sometimes aborts at interpreter exit, after the WAV is
# written and closed (a native thread torn down during shutdown): SIGABRT with only this line.
_UPSTREAM_EXIT_ABORT = "terminate called without an active exception"


def _run(cmd: list[str], env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    exit_abort = proc.returncode == -6 and proc.stderr.strip() == _UPSTREAM_EXIT_ABORT
    if proc.returncode != 0 and not exit_abort:
        raise SystemExit(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def run_language(language: str, root: Path) -> dict:
    from pocket_tts.default_parameters import get_default_voice_for_language

    from pocket_tts_onnx.manifest import Manifest

    voice = get_default_voice_for_language(language)
    work = root / language
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "hf-cache"
    t0 = time.perf_counter()
    fill_hub_cache(cache, language, voices=sorted({voice, "alba"}))
    result = {"language": language, "voice": voice, "fill_s": time.perf_counter() - t0}
    env = hub_env(cache)
    export = [sys.executable, str(REPO / "export.py"), "--quantize", "--output", "onnx"]
    if language != "english":  # english is the README's command exactly: no --language
        export += ["--language", language]
    result["export_s"] = _run(export, env, work)
    manifest = Manifest.load(work / "onnx")
    assert manifest.default_voice == voice, (manifest.default_voice, voice)
    assert voice in manifest.voices and manifest.tokenizer.kind == "tokenizers"
    cli = str(Path(sys.executable).parent / "pocket-tts-onnx")
    say = [cli, "say", TEXT, "--bundle", "onnx", "--precision", "fp32", "--temperature", "0"]
    result["say_s"] = _run([*say, "--voice", voice, "--out", "ours.wav"], env, work)
    _run([*say, "--out", "default.wav"], env, work)
    upstream = [sys.executable, "-m", "pocket_tts", "generate", "--text", TEXT, "-q"]
    upstream += ["--language", language, "--voice", voice, "--temperature", "0"]
    result["upstream_s"] = _run([*upstream, "--output-path", "up.wav"], env, work)
    ours = sf.read(work / "ours.wav", dtype="float32")[0]
    default = sf.read(work / "default.wav", dtype="float32")[0]
    up = sf.read(work / "up.wav", dtype="float32")[0]
    pad = manifest.sample_rate // 5  # upstream's writer appends 200 ms of silence
    result["samples"] = len(ours)
    result["same_length"] = len(up) == len(ours) + pad
    n = min(len(ours), len(up))
    result["max_abs_diff"] = float(np.max(np.abs(up[:n] - ours[:n])))
    result["default_equals_named"] = bool(np.array_equal(ours, default))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--languages", default="english,italian")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the caches and bundles")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="hub-e2e-"))
    ok = True
    try:
        for language in args.languages.split(","):
            r = run_language(language.strip(), root)
            good = r["same_length"] and r["max_abs_diff"] <= 3 / 32767 and r["default_equals_named"]
            ok &= good
            print(
                f"{r['language']:<10} voice {r['voice']:<9} export {r['export_s']:6.1f} s  "
                f"say {r['say_s']:5.1f} s  upstream {r['upstream_s']:5.1f} s  "
                f"{r['samples']} samples, max |ours - upstream| {r['max_abs_diff']:.1e}  "
                f"{'OK' if good else 'MISMATCH'}",
                flush=True,
            )
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
