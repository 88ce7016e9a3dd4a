"""One HTTP connection of the front door: parse each request, check the token,
call the route, answer JSON or a chunked ``text/event-stream``.

Every request gets an ``x-request-id`` (the client's, or a new one), returned
in the response, logged, and passed to the gRPC services; the bearer token is
checked as shared.grpc.calls.authorize checks a gRPC caller's and passed on too.
Bodies are read by Content-Length (over --max-request-bytes: 413); more than
--max-workers requests at once get 429. ``GET /health`` needs no token.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from services.openai_api import api_errors
from services.openai_api import metrics as m
from services.openai_api.api_errors import ApiError
from services.openai_api.routes import CallContext, Reply, StreamReply
from shared.grpc.calls import REQUEST_ID_HEADER
from shared.kafka.events import new_id
from shared.logs import request_id_var

if TYPE_CHECKING:
    from services.openai_api.server import FrontDoorHTTPServer

log = logging.getLogger(__name__)

MODELS_PREFIX = "/v1/models/"
_DISCARD_LIMIT = 64 * 1024 * 1024  # largest refused body read and dropped rather than cut off
# path -> the one method it answers; the path is also its metrics route label
_ROUTES = {
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/models": "GET",
    "/v1/feedback": "POST",
    "/health": "GET",
}


def route_label(path: str) -> str:
    """The metrics label of a path: the route, never the raw path (bounded cardinality)."""
    if path in _ROUTES:
        return path
    return "/v1/models/{model}" if path.startswith(MODELS_PREFIX) else "unmatched"


class FrontDoorHandler(BaseHTTPRequestHandler):
    """One connection: parses each request, answers JSON or a chunked SSE stream."""

    protocol_version = "HTTP/1.1"
    server_version = "rlhf-openai-api"
    sys_version = ""
    disable_nagle_algorithm = True  # SSE chunks go out as they are written
    server: FrontDoorHTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.config.idle_timeout_s)  # idle keep-alive and stalled clients
        self.server.track(self.connection, True)
        self.request_id = ""
        self.holding_slot = False

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args) -> None:
        log.debug("http " + format, *args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests (bad request line, oversized headers) also get OpenAI's error format."""
        self.close_connection = True
        self._send_json(Reply(code, ApiError(code, message or explain or "bad request", code="bad_request").body()))

    def _handle(self, method: str) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        route = route_label(path)
        given_id = self.headers.get(REQUEST_ID_HEADER, "")
        self.request_id = given_id[:128] if given_id else new_id()
        token = request_id_var.set(self.request_id)
        start = time.perf_counter()
        status = 500
        self.server.begin_request()
        m.HTTP_IN_FLIGHT.inc()
        try:
            status = self._serve(method, path, route, start)
        finally:
            m.HTTP_IN_FLIGHT.dec()
            m.HTTP_REQUESTS.labels(route, str(status)).inc()
            m.HTTP_LATENCY.labels(route, str(status)).observe(time.perf_counter() - start)
            request_id_var.reset(token)
            self.server.end_request()

    def _serve(self, method: str, path: str, route: str, start: float) -> int:
        """Answer one request; returns the HTTP status sent."""
        try:
            try:
                answer = self._dispatch(method, path)
            except ApiError as exc:
                answer = _error_reply(exc)
            except Exception:  # noqa: BLE001 - any bug becomes a 500 with the request id, logged with its traceback
                log.exception("unhandled error in HTTP request", extra={"path": path})
                answer = _error_reply(api_errors.internal(self.request_id))
            if isinstance(answer, StreamReply):
                self._send_stream(answer, route, start)
                return 200
            try:
                self._send_json(answer)
            except OSError as exc:  # the client left before its answer
                log.info("client left before the answer", extra={"error": f"{type(exc).__name__}: {exc}"})
                self.close_connection = True
            return answer.status
        finally:
            if self.holding_slot:  # held until the last byte, so streams count against --max-workers
                self.holding_slot = False
                self.server.slots.release()

    def _dispatch(self, method: str, path: str) -> Reply | StreamReply:
        raw = self._read_body()
        allowed = _ROUTES.get(path, "GET" if path.startswith(MODELS_PREFIX) else None)
        if allowed is None:
            raise api_errors.not_found_route(method, path)
        if method != allowed:
            raise api_errors.method_not_allowed(method, path, allowed)
        if path == "/health":
            ready = self.server.serving
            return Reply(200 if ready else 503, {"status": "SERVING" if ready else "NOT_SERVING"})
        ctx = self._authorize()
        if not self.server.slots.acquire(blocking=False):
            raise api_errors.too_busy(self.server.config.max_workers)
        self.holding_slot = True
        return self._call_route(path, raw, ctx)

    def _call_route(self, path: str, raw: bytes, ctx: CallContext) -> Reply | StreamReply:
        routes = self.server.routes
        if path == "/v1/chat/completions":
            return routes.chat_completions(raw, ctx)
        if path == "/v1/completions":
            return routes.completions(raw, ctx)
        if path == "/v1/models":
            return routes.models(ctx)
        if path == "/v1/feedback":
            return routes.feedback(raw, ctx)
        return routes.model(unquote(path[len(MODELS_PREFIX) :]), ctx)

    def _authorize(self) -> CallContext:
        """Check the bearer token like the gRPC servers' auth (shared.grpc.calls.authorize); keep it to pass on."""
        given = self.headers.get("Authorization", "")
        expected = self.server.expected_auth
        if expected is not None and not hmac.compare_digest(given.encode(), expected):
            raise api_errors.unauthenticated(bool(given))
        return CallContext(self.request_id, given, self.headers.get("x-client-id", "")[:128])

    def _read_body(self) -> bytes:
        """The whole body by Content-Length (411/413 close the connection: the rest of it is unread)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length (chunked uploads are not accepted)")
        try:
            length = int(self.headers.get("Content-Length", "0") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise ApiError(400, "Content-Length must be a whole number of bytes", code="bad_request")
        limit = self.server.config.max_request_bytes
        if length > limit:
            self._discard(length)
            raise ApiError(413, f"the body is {length} bytes; the limit is {limit} (--max-request-bytes)")
        try:
            raw = self.rfile.read(length) if length > 0 else b""
        except TimeoutError:
            self.close_connection = True
            raise ApiError(408, "the body did not arrive within --idle-timeout-s", code="timeout") from None
        if len(raw) < length:
            self.close_connection = True
            raise ApiError(400, "the body ended before Content-Length bytes arrived", code="bad_request")
        return raw

    def _discard(self, length: int) -> None:
        """Read and drop a refused body so the client reads our answer: closing with
        unread data would reset the connection and could lose it. Past _DISCARD_LIMIT, close."""
        if length > _DISCARD_LIMIT:
            self.close_connection = True
            return
        try:
            while length > 0:
                got = self.rfile.read(min(length, 65536))
                if not got:
                    break
                length -= len(got)
        except OSError:
            pass
        if length > 0:
            self.close_connection = True

    def _start_headers(self, status: int, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header(REQUEST_ID_HEADER, self.request_id or new_id())
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection or not self.server.serving:
            self.send_header("Connection", "close")  # also sets close_connection

    def _send_json(self, reply: Reply) -> None:
        data = json.dumps(reply.body).encode()
        self._start_headers(reply.status, "application/json", {**reply.headers, "Content-Length": str(len(data))})
        self.end_headers()
        self.wfile.write(data)

    def _send_stream(self, reply: StreamReply, route: str, start: float) -> None:
        """Chunked transfer, one chunk per SSE frame; a client that goes away cancels the policy call."""
        headers = {"Cache-Control": "no-cache", "Transfer-Encoding": "chunked", "X-Accel-Buffering": "no"}
        finished = False
        try:
            self._start_headers(200, "text/event-stream; charset=utf-8", headers)
            self.end_headers()
            for i, frame in enumerate(reply.frames):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                if i == 0:
                    m.HTTP_TIME_TO_FIRST_CHUNK.labels(route).observe(time.perf_counter() - start)
            self.wfile.write(b"0\r\n\r\n")
            finished = True
        except OSError as exc:  # BrokenPipe, ConnectionReset, a write timeout: the client is gone
            log.info("client left mid-stream", extra={"error": f"{type(exc).__name__}: {exc}"})
            m.HTTP_STREAM_ERRORS.labels(route, "client_gone").inc()
            self.close_connection = True
        finally:
            if not finished:
                reply.cancel()
                close = getattr(reply.frames, "close", None)
                if close is not None:
                    close()
        if reply.failed:
            m.HTTP_STREAM_ERRORS.labels(route, "upstream_error").inc()


def _error_reply(exc: ApiError) -> Reply:
    headers = {}
    if exc.retry_after_s is not None:
        # The OpenAI clients honour retry-after-ms first, then Retry-After (whole seconds).
        headers["retry-after-ms"] = str(int(exc.retry_after_s * 1000))
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return Reply(exc.status, exc.body(), headers)
