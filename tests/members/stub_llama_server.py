"""A stand-in llama-server for faults a real one cannot be made to show: it starts as a member (`/health` 200,
`/props` naming our model file, the warm-up `/completion` answered), then answers each chat completion as its
body's `stub` field asks: `ok`, a status (`500`, `400`, `501`), `garbage` (200 with a body that is not JSON),
`empty`, `error200`, `number`, `calls` (200 with JSON that is no chat completion: `{}`, an error, a number as
the content, tool calls that are no list),
`broken` (a 200 stream cut off mid-way), `hang`, `slow` (answers after SLOW seconds of silence; streamed, a chunk
every tenth of a second for SLOW seconds: a long answer making progress), or `long-log` (answers, then writes a
200 KB line to its output, as llama-server `--verbose` does with a request body, and a short line after it).
`GET /stub/health` says how many health probes it answered, so a test can wait until the watchdog has looked again.

Run as `python stub_llama_server.py --port PORT --model-path PATH`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

health_probes = 0
# 200 bodies that are JSON but no chat completion a vote can read: a broken member or a proxy in front of one.
SHAPES = {"empty": {}, "error200": {"error": {"message": "overloaded"}},
          "number": {"choices": [{"message": {"role": "assistant", "content": 5}, "finish_reason": "stop"}]},
          "calls": {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": "f()"}}]}}
SLOW = 2.0
lock = threading.Lock()


def completion(text: str) -> dict[str, object]:
    return {"object": "chat.completion", "model": "stub",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def serve(port: int, model_path: str) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            global health_probes
            if self.path == "/health":
                with lock:
                    health_probes += 1
                self.send(200, b'{"status": "ok"}')
            elif self.path == "/props":
                self.send(200, json.dumps({"model_path": model_path}).encode())
            elif self.path == "/stub/health":
                self.send(200, json.dumps({"probes": health_probes}).encode())
            else:
                self.send(200, b"", "text/plain")  # /metrics: nothing to report

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path == "/completion":  # the warm-up
                self.send(200, b'{"content": "hi"}')
                return
            mode = str(body.get("stub", "ok"))
            if mode == "hang":
                time.sleep(3600)
            elif mode == "slow" and not body.get("stream"):
                time.sleep(SLOW)
                self.send(200, json.dumps(completion("ok")).encode())
            elif mode == "long-log":
                self.send(200, json.dumps(completion("ok")).encode())
                # After the answer: an undrained pipe blocks only this thread, not the test's request.
                print("request body: " + "x" * 200_000, flush=True)
                print("after the long line", flush=True)
            elif mode == "garbage":
                self.send(200, b"this is not JSON")
            elif mode in SHAPES:  # JSON, a 200, but no chat completion
                self.send(200, json.dumps(SHAPES[mode]).encode())
            elif mode.isdigit():
                error = {"error": {"code": int(mode), "message": f"stub says {mode}", "type": "server_error"}}
                self.send(int(mode), json.dumps(error).encode())
            elif body.get("stream"):
                self.stream(int(body.get("n", 1)), broken=mode == "broken", slow=mode == "slow")
            elif mode == "broken":  # promises more bytes than it sends
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b'{"choices": [')
                self.close_connection = True
            else:
                self.send(200, json.dumps(completion("ok")).encode())

        def stream(self, n: int, broken: bool, slow: bool = False) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def chunk(data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            for i in range(n):
                event = {"choices": [{"index": i, "delta": {"content": "ok"}, "finish_reason": None}]}
                for _ in range(round(SLOW * 10 / n) if slow else 1):
                    if slow:
                        time.sleep(0.1)
                    chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
                if broken:  # cut off: no last chunk, the connection closes
                    self.close_connection = True
                    return
                event = {"choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]}
                chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
            chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"stub llama-server listening on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-path", required=True)
    args = parser.parse_args()
    serve(args.port, args.model_path)
