"""Tools around the package, not part of the runtime API: the benchmark (`pocket-tts-onnx
bench`, needs the [export] extra) and its report."""
