"""Write web/src/parameters.js from GenerationConfig's parameter list (one definition)."""

from pathlib import Path

from pocket_tts_onnx.runtime.config import parameters_js

target = Path(__file__).resolve().parents[1] / "web" / "src" / "parameters.js"
target.write_text(parameters_js())
print(f"wrote {target}")
