"""The RIFF/WAVE header at the start of a live stream sent without `encoding`, sans-IO.

Deepgram takes containerised audio when a live stream names no `encoding`; this server reads one
container, WAV, the one whose header a client writes once and then streams plain samples after: the
header gives the encoding, rate and channels, and everything after the `data` chunk's header is
samples. The `data` chunk's size is ignored (streaming writers put 0 or 0xFFFFFFFF there). Other
containers (Ogg, WebM, MP3, FLAC, ...) need a decoder per message and are refused, naming what was
recognised.
"""

from __future__ import annotations

import struct

import attrs

from amira.core.errors import BadAudio

MAX_HEADER_BYTES = 65_536  # `fmt ` and the chunks before `data` (LIST, fact, ...) must fit in this
# WAVE_FORMAT_* tags, and the Deepgram encoding each is, with its bits per sample.
WAVE_FORMATS = {1: ("linear16", 16), 6: ("alaw", 8), 7: ("mulaw", 8)}
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
OTHER_CONTAINERS = {
    b"OggS": "Ogg",
    b"\x1a\x45\xdf\xa3": "WebM/Matroska",
    b"fLaC": "FLAC",
    b"ID3": "MP3",
    b"\xff\xfb": "MP3",
    b"\xff\xf3": "MP3",
    b"\xff\xf1": "AAC (ADTS)",
    b"#!AMR": "AMR",
}
NOT_SUPPORTED = "live streams without encoding must be WAV (a RIFF/WAVE header, then samples)"


@attrs.frozen
class WavHeader:
    """What the header says, and where the samples start in the bytes it was read from."""

    encoding: str
    sample_rate: int
    channels: int
    data_offset: int


def read_wav_header(data: bytes) -> WavHeader | None:
    """The header of `data`, the first bytes of the stream; None while more bytes are needed.

    Raises `BadAudio` for anything that is not a WAV header of 16-bit PCM, mu-law or A-law (or that
    is longer than `MAX_HEADER_BYTES` before the samples)."""
    if not b"RIFF".startswith(data[:4]):
        for magic, name in OTHER_CONTAINERS.items():
            if data.startswith(magic):
                raise BadAudio(f"{NOT_SUPPORTED}; this is {name}: send raw audio with encoding instead")
        raise BadAudio(f"{NOT_SUPPORTED}, or raw audio with encoding and sample_rate")
    if len(data) >= 12 and data[8:12] != b"WAVE":
        raise BadAudio(f"{NOT_SUPPORTED}: a RIFF file of type {data[8:12]!r}")
    offset, found = 12, None
    while len(data) >= offset + 8:
        chunk, size = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        if chunk == b"data":
            if found is None:
                raise BadAudio("the WAV header has no fmt chunk before its data")
            encoding, rate, channels = found
            return WavHeader(encoding, rate, channels, offset + 8)
        end = offset + 8 + size + size % 2
        if end > MAX_HEADER_BYTES:
            break
        if len(data) < end:
            return None
        if chunk == b"fmt ":
            found = _format(data[offset + 8 : end])
        offset = end
    if len(data) > MAX_HEADER_BYTES:
        raise BadAudio(f"the WAV header is longer than {MAX_HEADER_BYTES} bytes before its data")
    return None


def _format(fmt: bytes) -> tuple[str, int, int]:
    if len(fmt) < 16:
        raise BadAudio(f"the WAV fmt chunk is {len(fmt)} bytes; it needs at least 16")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]  # the first two bytes of the SubFormat GUID
    known = WAVE_FORMATS.get(tag)
    if known is None or known[1] != bits:
        raise BadAudio(
            f"WAV audio must be 16-bit PCM, 8-bit mu-law or 8-bit A-law; got format {tag} with {bits} bits"
        )
    return known[0], rate, channels
