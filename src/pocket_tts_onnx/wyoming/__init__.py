"""`pocket-tts-onnx wyoming`: a Wyoming protocol TTS server for Home Assistant (needs the
`[wyoming]` extra). Built over the public engine API and the servers' shared scheduler;
`wyoming.cli.add_arguments` imports no Wyoming library. Imports no torch.
"""
