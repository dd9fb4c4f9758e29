"""The Deepgram dialect's Quart shell: `POST /v1/listen` (prerecorded) and `WS /v1/listen` (live).

The wire is `amira.protocols.deepgram`'s; prerecorded audio goes through the native batch parser
and `Recognizer.transcribe` (one call per channel with `multichannel=true`), live streams through
`amira.server.live`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import uuid

import numpy as np
import numpy.typing as npt
import trio
from quart import Quart, Response, jsonify, request, websocket

import amira
from amira.core.errors import AmiraError, BadRequest
from amira.protocols import deepgram
from amira.protocols.native_batch import (
    JSON_TYPES,
    PCM_TYPES,
    SOUND_FILE_TYPES,
    BatchOptions,
    parse_batch_body,
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

    async def read_audio(mimetype: str, body: bytes, options: BatchOptions) -> npt.NDArray[np.float32]:
        parsed = await trio.to_thread.run_sync(
            parse_batch_body, mimetype, body, options, settings.max_batch_audio_secs
        )
        return parsed.samples

    @app.post("/v1/listen")
    async def deepgram_listen() -> Response:
        request_id = str(uuid.uuid4())

        async def transcribe(call: BatchCall) -> Response:
            options = deepgram.ListenOptions.from_query(request.args, live=False)
            call.use_model(options.model)
            body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
            if request.mimetype in JSON_TYPES:
                refuse_url(body)
            if options.encoding is None and options.multichannel:
                raise BadRequest("multichannel=true needs raw audio: set encoding, sample_rate and channels")
            if options.encoding is None:
                channels = [await read_audio(SOUND_FILE_TYPES[0], body, BatchOptions())]
            else:
                raw = BatchOptions(sample_rate=options.sample_rate)
                channels = [
                    await read_audio(PCM_TYPES[0], pcm, raw) for pcm in deepgram.raw_channels(body, options)
                ]
            results = []
            for samples in channels:
                transcript = await state.recognizer.transcribe(samples, options.model)
                results.append((transcript.text, transcript.words))
            call.audio_seconds = transcript.audio_seconds * len(channels)
            document = deepgram.prerecorded_document(
                results,
                transcript.audio_seconds,
                model_info(options.model),
                request_id,
                hashlib.sha256(body).hexdigest(),
                now_iso(),
            )
            return jsonify(document)

        response = await answer_batch(BatchCall(state, "deepgram"), request.path, transcribe)
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
    """A JSON body is Deepgram's `{"url": ...}`: refused, the server fetches nothing."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        document = None
    if isinstance(document, dict) and "url" in document:
        raise BadRequest(
            "transcribing from a URL is not supported (no outbound requests): post the audio itself"
        )
    raise BadRequest('a JSON body must be {"url": ...}, which is not supported: post the audio itself')
