"""Sans-IO wire protocols: frames and bodies in, typed events out; results in, documents out.

One module per dialect and direction of work, in the manner of wsproto: no sockets, no trio, no
Quart. The server's handlers feed them what arrived and send what they return.

* `native_batch`: `POST /v2/decode/batch/{model}` bodies and response documents;
* `native_stream`: `WS /v2/decode/stream/{model}` frames, control bytes and result messages;
* `values`: parsing of the scalar values (query parameters, JSON fields) every protocol takes.
"""
