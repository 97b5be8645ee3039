"""modelzoo: classic deep-network training tricks on MNIST, exported to ONNX and served."""

__version__ = "0.1.0"
