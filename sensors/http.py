"""HTTP/1.x events: one per request, paired in order with its response when seen.

Flows are chosen column-wise (sensors.tcp_stream): TCP to/from the configured `ports`
(default 80, 8080, 8000, 3128), or any flow whose client opens with an HTTP method. The
first `max_bytes_per_dir` bytes of each direction are reassembled and parsed:

- requests from the client bytes: request line, headers up to the blank line, then the
  body skipped by Content-Length or by walking chunked encoding; the next request
  (pipelining) starts after it. Parsing stops at the first incomplete or malformed message
  (stats["http_malformed"] counts the latter);
- responses from the server bytes the same way; response i answers request i (1xx interim
  responses are skipped; HEAD requests and 204/304 responses have no body);
- body bytes: Content-Length, or the sum of chunk sizes when the whole chunked body is
  visible, or (response without either) the bytes up to the connection's FIN when it is
  visible; else -1;
- host: Host header, lower case, port removed; basic_auth_user: the user part of an
  `Authorization: Basic` header (the password is never decoded into an event);
- response_mime_type: Content-Type without parameters, lower case.

Parsing: the bytes of every flow of a batch are walked by one compiled kernel
(sensors.http_kernel, offsets only; str objects are built for the emitted rows alone);
flows whose bytes need Python's own semantics (non-ASCII digits in Content-Length, odd
chunk sizes...) are parsed by `parse_messages`, the pure-Python reference the kernel is
tested against (tests/test_http_kernel.py).

A request is emitted once its response headers are parsed and its body size is known (or
cannot become known: the server direction hit its cap or a gap), or when the flow ends
(then without response: status 0, response body -1). Event time = the first packet
carrying the request's first byte, from the collector's packet list (the flow's last packet
time when the request starts past the packet list).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.schema import HTTP, EventBatch
from sensors.analyzer import Analyzer
from sensors.http_kernel import (
    F_BAD_REQ,
    F_BAD_RESP,
    F_FALLBACK,
    F_REQ_COUNT,
    F_REQ_FIRST,
    F_RESP_COUNT,
    F_RESP_FIRST,
    H_AUTH,
    H_CTYPE,
    H_HOST,
    H_REFERER,
    H_UA,
    M_A0,
    M_A1,
    M_B0,
    M_B1,
    M_BODY,
    M_C0,
    M_C1,
    M_HEADERS,
    M_START,
    M_STATUS,
    MAX_HEADER_BYTES,
    MAX_MESSAGES,
    parse_flows,
)
from sensors.packets import DecodedPackets
from sensors.tcp_stream import (
    StreamChunk,
    StreamCollector,
    endpoint_columns,
    kind_columns,
    prefix_predicate,
)

DEFAULT_PORTS = (80, 8080, 8000, 3128)
METHODS = (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT",
           b"TRACE", b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK")
# MAX_HEADER_BYTES, MAX_MESSAGES (requests/responses parsed per direction): shared with the
# kernel, which must stop where parse_messages stops
_REQUEST_LINE = re.compile(rb"^([A-Z][A-Z_-]{0,19}) +(\S+)(?: +HTTP/(\d\.\d))? *$")
_STATUS_LINE = re.compile(rb"^HTTP/(\d\.\d) +(\d{3})(?:[ \t].*)?$")


class MalformedHTTP(ValueError):
    """Bytes that are not an HTTP/1.x message where one must start."""


@dataclass
class Message:
    """One parsed request or response."""

    start: int  # offset of its first byte in the direction's bytes
    line: tuple[str, ...]  # (method, uri, version) or (version, status)
    headers: dict[str, str]  # lower-case names; the first occurrence wins
    body_bytes: int  # -1 unknown


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _chunked_length(data: bytes, pos: int) -> tuple[int, int]:
    """Walk a chunked body from `pos` -> (body bytes, end offset); (-1, -1) if not all visible."""
    total = 0
    for _ in range(100000):
        eol = data.find(b"\r\n", pos, pos + 1024)
        if eol < 0:
            return -1, -1
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise MalformedHTTP("bad chunk size") from exc
        pos = eol + 2
        if size == 0:
            end = data.find(b"\r\n\r\n", pos - 2)  # trailers end with an empty line
            return (total, end + 4) if end >= 0 else (total, -1)
        total += size
        pos += size + 2
        if pos > len(data):
            return -1, -1
    return -1, -1


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = _text(name.strip()).lower()
        if key not in headers:
            headers[key] = _text(value.strip())
    return headers


def parse_messages(data: bytes, requests: bool, ended: bool,
                   head_requests: list[bool] | None = None) -> tuple[list[Message], bool]:
    """Complete messages at the start of one direction -> (messages, malformed).

    `ended`: the direction's bytes are complete (FIN seen, no cap/gap), so a response body
    without length runs to the end. `head_requests[i]` says response i answers a HEAD.
    """
    out: list[Message] = []
    pos = 0
    answered = 0  # final (non-1xx) responses seen, to match HEAD requests
    while pos < len(data) and len(out) < MAX_MESSAGES:
        while data.startswith(b"\r\n", pos):
            pos += 2  # stray CRLF between messages (RFC 9112 2.2)
        if pos >= len(data):
            break
        end = data.find(b"\r\n\r\n", pos, pos + MAX_HEADER_BYTES)
        sep = 4
        if end < 0:
            end = data.find(b"\n\n", pos, pos + MAX_HEADER_BYTES)
            sep = 2
        if end < 0:
            if len(data) - pos >= MAX_HEADER_BYTES:
                return out, True
            break  # headers not complete yet
        head = data[pos:end]
        first, _, rest = head.partition(b"\n")
        first = first.rstrip(b"\r")
        match = (_REQUEST_LINE if requests else _STATUS_LINE).match(first)
        if match is None:
            return out, True
        headers = _headers(rest)
        body_start = end + sep
        length = headers.get("content-length", "")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if requests:
            line = (_text(match.group(1)), _text(match.group(2)), _text(match.group(3) or b""))
            no_body = False
        else:
            status = int(match.group(2))
            line = (_text(match.group(1)), str(status))
            is_head = head_requests is not None and answered < len(head_requests) \
                and head_requests[answered]
            no_body = 100 <= status < 200 or status in (204, 304) or is_head
        if no_body:
            body, next_pos = 0, body_start
        elif chunked:
            try:
                body, next_pos = _chunked_length(data, body_start)
            except MalformedHTTP:
                out.append(Message(pos, line, headers, -1))
                return out, True
        elif length.isdecimal():  # not isdigit: "¹" (latin-1 0xB9) is a digit int() refuses
            body = int(length)
            next_pos = body_start + body
        elif requests:
            body, next_pos = 0, body_start  # a request without length has no body
        else:
            body = len(data) - body_start if ended else -1
            next_pos = -1
        out.append(Message(pos, line, headers, body))
        if not requests and not (100 <= int(line[1]) < 200):
            answered += 1
        if next_pos < 0 or next_pos > len(data):
            break  # the body runs past what is visible: no further message can be found
        pos = next_pos
    return out, False


def host_without_port(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host


def basic_auth_user(value: str) -> str:
    """User name of an `Authorization: Basic` value; "" otherwise. The password is dropped."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        raw = base64.b64decode(token.strip() + "=" * (-len(token.strip()) % 4), validate=False)
    except (binascii.Error, ValueError):
        return ""
    return _text(raw.split(b":", 1)[0])


def _mime(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def request_row(request: Message, response: Message | None) -> dict:
    method, uri, version = request.line
    h = request.headers
    return {
        "method": method,
        "host": host_without_port(h.get("host", "")),
        "uri": uri,
        "version": version,
        "user_agent": h.get("user-agent", ""),
        "referrer": h.get("referer", ""),
        "status": int(response.line[1]) if response else 0,
        "request_body_bytes": request.body_bytes,
        "response_body_bytes": response.body_bytes if response else -1,
        "response_mime_type": _mime(response.headers.get("content-type", "")) if response else "",
        "basic_auth_user": basic_auth_user(h.get("authorization", "")),
    }


def _offset_time(chunk: StreamChunk, offset: int) -> int:
    """Time of the client packet that carried byte `offset` (see the module doc)."""
    seen = 0
    last = chunk.first_ts[0] if chunk.first_ts[0] >= 0 else chunk.start_ts
    for ts, direction, length in chunk.packets:
        if direction != 0:
            continue
        last = ts
        if offset < seen + length:
            return ts
        seen += length
    return last if seen > offset else chunk.last_ts


def _complete(chunk: StreamChunk, direction: int) -> bool:
    """The direction ended and every byte up to its end is there (parse_messages' `ended`)."""
    return chunk.ended[direction] and not (chunk.capped[direction] or chunk.gap[direction])


def reference_parse(chunk: StreamChunk) -> tuple[list[Message], bool, list[Message], bool]:
    """(requests, malformed, final responses, malformed) of a flow by parse_messages: the
    pure-Python parser, for the flows the kernel leaves to it and as the tests' reference."""
    requests, bad_req = parse_messages(chunk.client_data, True, _complete(chunk, 0))
    heads = [r.line[0] == "HEAD" for r in requests]
    responses, bad_resp = parse_messages(chunk.server_data, False, _complete(chunk, 1), heads)
    responses = [r for r in responses if not 100 <= int(r.line[1]) < 200]
    return requests, bad_req, responses, bad_resp


class _ParsedFlows:
    """Every chunk of a batch parsed by one kernel call over their concatenated bytes;
    str objects are made only for the rows asked for (`flow(...)[5]`)."""

    def __init__(self, chunks: list[StreamChunk]) -> None:
        self.fallbacks = 0  # flows parsed by parse_messages (the kernel was unsure)
        n = len(chunks)
        parts = [data for chunk in chunks for data in chunk.data]
        lengths = np.fromiter(map(len, parts), dtype=np.int64, count=2 * n)
        starts = np.cumsum(lengths) - lengths
        complete = np.fromiter((_complete(c, d) for c in chunks for d in (0, 1)), dtype=bool,
                               count=2 * n)
        self.buf = b"".join(parts)
        flows, messages = parse_flows(np.frombuffer(self.buf, dtype=np.uint8), starts, lengths,
                                      complete)
        self.flows = flows.tolist()
        self.messages = messages.tolist()

    def flow(self, index: int, chunk: StreamChunk) -> tuple[
            int, bool, bool, list[int], list[int], Callable[[int], dict]]:
        """(requests, request side malformed, response side malformed, request starts,
        final response body sizes, row(i) -> event row of request i with its response)."""
        f = self.flows[index]
        if f[F_FALLBACK]:
            self.fallbacks += 1
            requests, bad_req, responses, bad_resp = reference_parse(chunk)
            return (len(requests), bad_req, bad_resp, [r.start for r in requests],
                    [r.body_bytes for r in responses],
                    lambda i: request_row(requests[i], responses[i] if i < len(responses)
                                          else None))
        req = self.messages[f[F_REQ_FIRST] : f[F_REQ_FIRST] + f[F_REQ_COUNT]]
        resp = self.messages[f[F_RESP_FIRST] : f[F_RESP_FIRST] + f[F_RESP_COUNT]]
        return (len(req), bool(f[F_BAD_REQ]), bool(f[F_BAD_RESP]), [m[M_START] for m in req],
                [m[M_BODY] for m in resp],
                lambda i: self._row(req[i], resp[i] if i < len(resp) else None))

    def all_rows(self, index: int, chunk: StreamChunk, rows: list[dict],
                 owners: list[StreamChunk], times: list[int]) -> bool:
        """Rows of every request of a final flow seen whole (what _flow_events emits for a
        final chunk with nothing emitted before); False if the flow is the reference
        parser's or malformed (left to _flow_events, which also counts it)."""
        f = self.flows[index]
        if f[F_FALLBACK] or f[F_BAD_REQ] or f[F_BAD_RESP]:
            return False
        messages = self.messages
        first, resp_first, n_resp = f[F_REQ_FIRST], f[F_RESP_FIRST], f[F_RESP_COUNT]
        for i in range(f[F_REQ_COUNT]):
            req = messages[first + i]
            rows.append(self._row(req, messages[resp_first + i] if i < n_resp else None))
            owners.append(chunk)
            times.append(_offset_time(chunk, req[M_START]))
        return True

    def _row(self, req: list[int], resp: list[int] | None) -> dict:
        """request_row from kernel offsets (same values, see tests/test_http_kernel.py)."""
        buf = self.buf
        # header value slots: (start, end) at M_HEADERS + 2 * H_*; start -1 = absent
        host, ua, referer, auth = (M_HEADERS + 2 * H_HOST, M_HEADERS + 2 * H_UA,
                                   M_HEADERS + 2 * H_REFERER, M_HEADERS + 2 * H_AUTH)
        auth_value = buf[req[auth] : req[auth + 1]].decode("utf-8", "replace") \
            if req[auth] >= 0 else ""
        if resp:
            ctype = M_HEADERS + 2 * H_CTYPE
            mime = _mime(buf[resp[ctype] : resp[ctype + 1]].decode("utf-8", "replace")) \
                if resp[ctype] >= 0 else ""
        return {
            "method": buf[req[M_A0] : req[M_A1]].decode("ascii"),  # [A-Z_-] only
            "host": host_without_port(buf[req[host] : req[host + 1]].decode("utf-8", "replace"))
            if req[host] >= 0 else "",
            "uri": buf[req[M_B0] : req[M_B1]].decode("utf-8", "replace"),
            "version": buf[req[M_C0] : req[M_C1]].decode("ascii") if req[M_C0] >= 0 else "",
            "user_agent": buf[req[ua] : req[ua + 1]].decode("utf-8", "replace")
            if req[ua] >= 0 else "",
            "referrer": buf[req[referer] : req[referer + 1]].decode("utf-8", "replace")
            if req[referer] >= 0 else "",
            "status": resp[M_STATUS] if resp else 0,
            "request_body_bytes": req[M_BODY],
            "response_body_bytes": resp[M_BODY] if resp else -1,
            "response_mime_type": mime if resp else "",
            "basic_auth_user": basic_auth_user(auth_value) if auth_value else "",
        }


class HttpAnalyzer(Analyzer):
    """HTTP/1.x request/response events (see the module doc). Settings (all optional):
    ports, max_bytes_per_dir, max_flows, max_bytes_total, idle_timeout_s, max_packets_meta."""

    def __init__(self, config: Mapping, observer_name: str, ingress_zone: str) -> None:
        super().__init__(config, observer_name, ingress_zone)
        self.streams = StreamCollector(
            set(config.get("ports", DEFAULT_PORTS)),
            max_bytes_per_dir=int(config.get("max_bytes_per_dir", 16384)),
            max_flows=int(config.get("max_flows", 20000)),
            idle_timeout_s=float(config.get("idle_timeout_s", 300)),
            client_predicate=prefix_predicate(m + b" " for m in METHODS),
            max_bytes_total=int(config.get("max_bytes_total", 128 << 20)),
            max_packets_meta=int(config.get("max_packets_meta", 256)),
        )
        self.emitted: dict[tuple, int] = {}  # flow key -> requests already emitted

    def process(self, packets: DecodedPackets) -> list[EventBatch]:
        return self._events(self.streams.feed(packets))

    def flush(self) -> list[EventBatch]:
        return self._events(self.streams.flush())

    def _events(self, chunks: list[StreamChunk]) -> list[EventBatch]:
        rows: list[dict] = []
        owners: list[StreamChunk] = []
        times: list[int] = []
        parsed = _ParsedFlows(chunks)
        emitted = self.emitted
        for index, chunk in enumerate(chunks):
            try:
                if chunk.final and chunk.key not in emitted and parsed.all_rows(
                        index, chunk, rows, owners, times):
                    continue  # a whole flow at once: the common case, no per-flow state
                self._flow_events(chunk, parsed, index, rows, owners, times)
            except Exception:  # noqa: BLE001 - hostile bytes must never stop the sensor
                self._count("http_malformed")
                self.emitted.pop(chunk.key, None)
                if not chunk.final:
                    self.streams.release(chunk.key)
        for key, value in self.streams.stats.items():
            self.stats[f"http_stream.{key}"] = value
        if parsed.fallbacks:
            self._count("http_reference_parses", parsed.fallbacks)
        if not rows:
            return []
        self._count("http_requests", len(rows))
        columns = endpoint_columns(owners, times, self.observer_name, self.ingress_zone)
        columns.update(kind_columns(HTTP, rows, skip=columns))
        return [EventBatch(HTTP.name, columns)]

    def _flow_events(self, chunk: StreamChunk, parsed: _ParsedFlows, index: int,
                     rows: list[dict], owners: list[StreamChunk], times: list[int]) -> None:
        done = self.emitted.get(chunk.key, 0)
        if chunk.final:
            self.emitted.pop(chunk.key, None)
        n_requests, bad_req, bad_resp, starts, bodies, row_of = parsed.flow(index, chunk)
        if (bad_req or bad_resp) and chunk.final:
            self._count("http_malformed")
        for i in range(done, n_requests):
            has_response = i < len(bodies)
            if not has_response and not chunk.final:
                break  # wait for the response (or the end of the flow)
            if has_response and bodies[i] < 0 and not chunk.final \
                    and not (chunk.capped[1] or chunk.gap[1]):
                break  # body size still to come (chunked, or up to the FIN)
            rows.append(row_of(i))
            owners.append(chunk)
            times.append(_offset_time(chunk, starts[i]))
            done = i + 1
        if not chunk.final:
            self.emitted[chunk.key] = done
            if not n_requests and (bad_req or chunk.capped[0] or chunk.gap[0]):
                self.emitted.pop(chunk.key, None)  # not HTTP (or nothing readable): stop
                self._count("http_malformed" if bad_req else "http_unreadable")
                self.streams.release(chunk.key)

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n
