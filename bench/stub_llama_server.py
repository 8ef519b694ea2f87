#!/usr/bin/env python3
"""A stand-in for llama-server that answers instantly — only to isolate the router's own cost in
bench/overhead.py (a real member's generation time would hide it). Never used by tests.

It speaks just enough of llama-server: `--help`/`--version` for council's binary check, `/health`,
`/props` (naming the model file it was given), `/completion`, `/v1/chat/completions`, `/metrics`.
"""

from __future__ import annotations

import asyncio
import json
import sys

HELP = "--port N  port\n--spec-type [none|draft-simple|draft-mtp|ngram-mod]   speculative decoding\n"
CHAT = json.dumps({
    "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is 42."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14},
}).encode()


def arg(name: str, default: str = "") -> str:
    argv = sys.argv
    return argv[argv.index(name) + 1] if name in argv else default


class Stub(asyncio.Protocol):
    def __init__(self, props: bytes) -> None:
        self.props = props
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            path = head.split(b" ", 2)[1]
            body = {b"/health": b'{"status":"ok"}', b"/props": self.props, b"/metrics": b"# stub\n"}.get(path, CHAT)
            kind = b"text/plain" if path == b"/metrics" else b"application/json"
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: "  # type: ignore[attr-defined]
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)


async def main() -> None:
    props = json.dumps({"model_path": arg("--model")}).encode()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Stub(props), "127.0.0.1", int(arg("--port", "8080")))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if "--help" in sys.argv:
        print(HELP)
    elif "--version" in sys.argv:
        print("version: 0.0.0 (build 11434, stub)")
    else:
        asyncio.run(main())
