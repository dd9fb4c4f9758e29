"""AMIRA: real-time speech recognition (RNN-T/TDT) over HTTP and WebSocket, in front of Triton."""

__version__ = "0.1.0"
