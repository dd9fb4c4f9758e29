"""The OpenAI dialect's Quart shell: `POST /v1/audio/transcriptions`, `GET /v1/models`,
`WS /v1/realtime?intent=transcription`.

The wire is `amira.protocols.openai_audio`'s and `openai_realtime`'s; the audio file goes through
the native batch parser (in a worker thread) and `Recognizer.transcribe` (the long-batch path for
recordings longer than a window, so that `srt`/`vtt` are the native endpoint's), the live
sessions through `amira.server.live`.
"""

from __future__ import annotations

import time

from quart import Quart, Response, jsonify, request, websocket

from amira.core.errors import BadRequest, UnknownModel
from amira.protocols import openai_audio
from amira.protocols.native_batch import ANY_SOUND_FILE, BatchInput, BatchOptions, parse_batch_body
from amira.protocols.openai_realtime import RealtimeTranscription
from amira.server.batch_requests import BatchCall, answer_batch
from amira.server.errors import dialect_error_response
from amira.server.live import refuse_live, serve_live
from amira.server.state import ServerState, new_id

REALTIME_SUBPROTOCOL = "realtime"


def add_openai_routes(app: Quart, state: ServerState) -> None:
    engine, settings = state.engine, state.settings
    created = int(time.time())

    @app.get("/v1/models")
    async def openai_models() -> Response:
        return jsonify(openai_audio.models_document(sorted(engine.configs), created))

    @app.get("/v1/models/<model>")
    async def openai_model(model: str) -> Response:
        try:
            engine.check_known(model)
        except UnknownModel as exc:
            return dialect_error_response(request.path, exc)
        return jsonify(openai_audio.model_document(model, created))

    @app.post("/v1/audio/transcriptions")
    async def openai_transcriptions() -> Response:
        call = BatchCall(state, "openai")
        content_type = request.headers.get("Content-Type", "")

        def parse(body: bytearray) -> tuple[openai_audio.TranscriptionRequest, BatchInput]:
            form = openai_audio.parse_transcription_form(content_type, bytes(body))
            call.use_model(form.model)  # before the audio is decoded
            return form, parse_batch_body(
                ANY_SOUND_FILE, form.audio, BatchOptions(), settings.max_batch_audio_secs
            )

        async def transcribe(
            call: BatchCall, parsed: tuple[openai_audio.TranscriptionRequest, BatchInput]
        ) -> Response:
            form, audio = parsed
            transcript = await state.recognizer.transcribe(audio.samples, form.model)
            call.audio_seconds = transcript.audio_seconds
            if form.stream:
                events = "".join(openai_audio.stream_events(transcript))
                return Response(
                    events, content_type="text/event-stream", headers={"Cache-Control": "no-cache"}
                )
            if form.response_format in openai_audio.TEXT_TYPES:
                content_type = openai_audio.TEXT_TYPES[form.response_format] + "; charset=utf-8"
                return Response(
                    openai_audio.text_body(transcript, form.response_format), content_type=content_type
                )
            if form.response_format == "verbose_json":
                vocabulary = engine.model_set(form.model).model_set.vocabulary
                return jsonify(openai_audio.verbose_document(transcript, form, vocabulary))
            return jsonify(openai_audio.json_document(transcript))

        return await answer_batch(call, request.path, parse, transcribe)

    @app.websocket("/v1/realtime")
    async def openai_realtime() -> None:
        stream_id = new_id()
        protocol = RealtimeTranscription(
            stream_id,
            frozenset(engine.configs),
            settings.max_frame_bytes,
            settings.max_stream_audio_secs,
            beta=websocket.headers.get("OpenAI-Beta", "").strip().lower() == "realtime=v1",
            defaults=settings.segment_options(),
        )
        subprotocol = (
            REALTIME_SUBPROTOCOL if REALTIME_SUBPROTOCOL in websocket.requested_subprotocols else None
        )
        if websocket.args.get("intent") != "transcription":
            refused = BadRequest("only transcription sessions are served: connect with ?intent=transcription")
            await refuse_live(
                state, "openai", refused, protocol.error_message(refused, stream_id), subprotocol
            )
            return
        await serve_live(protocol, state, "openai", stream_id, subprotocol)
