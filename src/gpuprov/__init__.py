"""gpuprov: turn an SSH-reachable NVIDIA GPU host into a healthy, tunnelled vLLM endpoint."""

__version__ = "0.1.0"
