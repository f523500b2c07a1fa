"""Seed-compatible entry point: `python export.py [--quantize] [options]`.

Same options as `pocket-tts-onnx export`; writes the bundle to ./onnx by default.
"""

import sys

from pocket_tts_onnx.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
