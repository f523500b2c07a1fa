"""`pocket-tts-onnx serve`: a streaming HTTP API over a bundle (needs the `[serve]` extra).

Nothing here is imported by the runtime; `serve.cli.add_arguments` imports no web library,
so `pocket-tts-onnx --help` works without the extra. The server imports no torch.
"""
