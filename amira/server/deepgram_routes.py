"""The Deepgram dialect's Quart shell: `POST /v1/listen` (prerecorded) and `WS /v1/listen` (live).

The wire is `amira.protocols.deepgram`'s; prerecorded audio goes through the native batch parser
and `Recognizer.transcribe` (one call per channel with `multichannel=true`), live streams through
`amira.server.live`.
"""

from __future__ import annotations

import datetime
import hashlib
import uuid

from quart import Quart, Response, jsonify, request, websocket

import amira
from amira.core.errors import AmiraError, BadRequest
from amira.protocols import deepgram
from amira.protocols.native_batch import (
    ANY_SOUND_FILE,
    JSON_TYPES,
    PCM_TYPES,
    BatchInput,
    BatchOptions,
    parse_batch_body,
    read_json_fields,
)
from amira.server.batch_requests import BatchCall, answer_batch
from amira.server.live import refuse_live, serve_live
from amira.server.security import DEEPGRAM_KEY_SUBPROTOCOL
from amira.server.state import ServerState, new_id


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def add_deepgram_routes(app: Quart, state: ServerState) -> None:
    engine, settings = state.engine, state.settings

    def model_info(model: str) -> deepgram.ModelInfo:
        loaded = engine.model_set(model)
        return deepgram.ModelInfo(model, amira.__version__, loaded.model_set.kind)

    @app.post("/v1/listen")
    async def deepgram_listen() -> Response:
        request_id = str(uuid.uuid4())
        mimetype = request.mimetype
        query = request.args
        call = BatchCall(state, "deepgram")
        options = deepgram.ListenOptions()  # replaced by the request's in `check`, before the body

        def check() -> None:
            nonlocal options
            options = deepgram.ListenOptions.from_query(query, live=False)
            call.use_model(options.model)
            if options.encoding is None and options.multichannel:
                raise BadRequest("multichannel=true needs raw audio: set encoding, sample_rate and channels")

        def parse(body: bytearray) -> tuple[list[BatchInput], str]:
            """The channels' audio, and the body's SHA-256 for the response's metadata."""
            data = bytes(body)
            if mimetype in JSON_TYPES:
                refuse_url(data)
            if options.encoding is None:
                channels = [
                    parse_batch_body(ANY_SOUND_FILE, data, BatchOptions(), settings.max_batch_audio_secs)
                ]
            else:
                raw = BatchOptions(sample_rate=options.sample_rate)
                channels = [
                    parse_batch_body(PCM_TYPES[0], pcm, raw, settings.max_batch_audio_secs)
                    for pcm in deepgram.raw_channels(data, options)
                ]
            return channels, hashlib.sha256(data).hexdigest()

        async def transcribe(call: BatchCall, parsed: tuple[list[BatchInput], str]) -> Response:
            channels, sha256 = parsed
            results = []
            for audio in channels:
                transcript = await state.recognizer.transcribe(audio.samples, options.model)
                results.append((transcript.text, transcript.words))
            call.audio_seconds = transcript.audio_seconds * len(channels)
            document = deepgram.prerecorded_document(
                results,
                transcript.audio_seconds,
                model_info(options.model),
                request_id,
                sha256,
                now_iso(),
            )
            return jsonify(document)

        response = await answer_batch(call, request.path, parse, transcribe, check=check)
        response.headers["dg-request-id"] = request_id
        return response

    @app.websocket("/v1/listen")
    async def deepgram_listen_live() -> None:
        stream_id = new_id()
        offered = websocket.requested_subprotocols
        subprotocol = DEEPGRAM_KEY_SUBPROTOCOL if DEEPGRAM_KEY_SUBPROTOCOL in offered else None
        try:
            options = deepgram.ListenOptions.from_query(websocket.args, live=True)
            info = model_info(options.model)
        except AmiraError as exc:
            await refuse_live(
                state, "deepgram", exc, deepgram.live_error_message(exc, stream_id), subprotocol
            )
            return
        protocol = deepgram.DeepgramLive(
            options,
            info,
            str(uuid.uuid4()),
            now_iso(),
            settings.max_frame_bytes,
            settings.max_stream_audio_secs,
            settings.segment_options(),
        )
        await serve_live(protocol, state, "deepgram", stream_id, subprotocol)


def refuse_url(body: bytes) -> None:
    """A JSON body is Deepgram's `{"url": ...}`: refused, the server fetches nothing. The body is
    read with the native batch protocol's bounded reader, never `json.loads` of it whole."""
    try:
        fields, _ = read_json_fields(body)
    except BadRequest:
        fields = {}
    if "url" in fields:
        raise BadRequest(
            "transcribing from a URL is not supported (no outbound requests): post the audio itself"
        )
    raise BadRequest('a JSON body must be {"url": ...}, which is not supported: post the audio itself')
