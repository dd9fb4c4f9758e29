"""AMIRA: real-time speech recognition (RNN-T/TDT) over HTTP and WebSocket, in front of Triton."""

__version__ = "0.1.0"

from amira.recognizer import Recognizer, open_recognizer
from amira.settings import Settings

__all__ = ["Recognizer", "Settings", "__version__", "open_recognizer"]
