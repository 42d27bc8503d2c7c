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
- response_mime_type: Content-Type without parameters, lower case;
- a body size too large for the int64 column (a Content-Length of 19+ digits) is -1.

Parsing: the bytes of every flow of a batch are walked by one compiled kernel
(sensors.http_kernel, offsets only); flows whose bytes need Python's own semantics
(non-ASCII digits in Content-Length, odd chunk sizes...) are parsed by `parse_messages`,
the pure-Python reference the kernel is tested against (tests/test_http_kernel.py).

Event building is column-wise, on the collector's StreamBatch (`feed_joined`: every flow's
bytes in one buffer, the chunk fields as columns; sensors.stream_columns): the ready
requests of every flow the kernel parsed (seen whole or in pieces, malformed ones included)
are selected from its flow table by one compiled pass (http_kernel.ready_events), their
times and endpoint columns read from the batch's columns (no StreamChunk object is made
for them); the text columns' equal slices are numbered by one kernel pass
(http_kernel.distinct_slice_table), the distinct ones gathered (join_slices) and decoded at
once, and the per-value rules (host without port, MIME type, Basic user) run once per
distinct value. Flows seen in pieces are then visited for their state (requests emitted so
far); only the reference parser's go through a per-flow loop on their chunks.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

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
    M_BODY,
    M_START,
    MAX_HEADER_BYTES,
    MAX_MESSAGES,
    distinct_slice_table,
    event_fields,
    join_slices,
    needed_lengths,
    parse_flows,
    ready_events,
    rows_with_ports,
)
from sensors.packets import DecodedPackets
from sensors.stream_columns import (
    ChunkColumns,
    StreamColumns,
    chunks_at,
    endpoint_columns_at,
    event_times,
    read_only,
    stream_columns,
)
from sensors.tcp_stream import StreamChunk, StreamCollector, kind_columns, prefix_predicate

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
                   head_requests: list[bool] | None = None,
                   whole: int | None = None) -> tuple[list[Message], bool]:
    """Complete messages at the start of one direction -> (messages, malformed).

    `ended`: the direction's bytes are complete (FIN seen, no cap/gap), so a response body
    without length runs to the end. `head_requests[i]` says response i answers a HEAD.
    `whole`: the direction's length when `data` is its start only (the collector's trim,
    http_kernel.needed_lengths, cut it): header blocks are looked for up to MAX_HEADER_BYTES
    of the whole direction.
    """
    size = len(data) if whole is None else max(whole, len(data))
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
            if size - pos >= MAX_HEADER_BYTES:
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


# the rule of each text field of event_fields (T_* order), for _texts
_TEXT_RULES: tuple[Callable[[str], str] | None, ...] = (
    None,  # method: [A-Z_-] only
    host_without_port,
    None,  # uri
    None,  # version: digits and "."
    None,  # user agent
    None,  # referrer
    _mime,
    basic_auth_user,
)


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
    """Time of the client packet that carried byte `offset` (see the module doc), walking
    the chunk's packet list: the reference of stream_columns.event_times, which the
    analyzer uses (one compiled walk for every event of a batch, on the batch's packet
    columns; tests/test_http_kernel.py checks they agree)."""
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


def reference_parse(chunk: StreamChunk, whole: tuple[int, int] | None = None
                    ) -> tuple[list[Message], bool, list[Message], bool]:
    """(requests, malformed, final responses, malformed) of a flow by parse_messages: the
    pure-Python parser, for the flows the kernel leaves to it and as the tests' reference
    (`whole`: the directions' lengths before the trim, StreamBatch.whole)."""
    w0, w1 = (None, None) if whole is None else whole
    requests, bad_req = parse_messages(chunk.client_data, True, _complete(chunk, 0), whole=w0)
    heads = [r.line[0] == "HEAD" for r in requests]
    responses, bad_resp = parse_messages(chunk.server_data, False, _complete(chunk, 1), heads,
                                         whole=w1)
    responses = [r for r in responses if not 100 <= int(r.line[1]) < 200]
    return requests, bad_req, responses, bad_resp


def _text_columns(buf: np.ndarray, slices: Sequence[tuple[np.ndarray, np.ndarray,
                                                            Callable[[str], str] | None]]
                  ) -> list[np.ndarray]:
    """One object column per (starts, stops, text_of) of `slices`: buf[starts[i]:stops[i]]
    decoded (UTF-8, "replace"), then text_of(...) if given ("" where starts < 0); _texts
    of those columns."""
    starts = np.stack([np.where(a < 0, 0, a) for a, _, _ in slices], axis=1)
    stops = np.stack([np.where(a < 0, 0, b) for a, b, _ in slices], axis=1)
    return _texts(buf, starts, stops, [text_of for _, _, text_of in slices])


def _texts(buf: np.ndarray, starts: np.ndarray, stops: np.ndarray,
           rules: Sequence[Callable[[str], str] | None]) -> list[np.ndarray]:
    """One object column per column c of (n, k) `starts`/`stops` (slices of buf, empty
    where start == stop): each slice decoded (UTF-8, "replace"), then rules[c](...) if given.

    Equal slices of a column are found by one kernel call over every column
    (distinct_slice_table, row by row: each row's slices share cache lines) and only the
    distinct ones are decoded, passed to their rule and made str objects (methods, hosts,
    user agents, content types repeat); each column is one take of those. They are joined
    with "\n" and decoded at once: none holds a "\n" (header values and request-line
    fields end at the line's end, a URI has no white space), and UTF-8 decoding with
    "replace" restarts at every ASCII byte, so each piece is the slice's own decoding
    (tests/test_http_kernel.py)."""
    k = len(rules)
    ids, first = distinct_slice_table(buf, starts, stops, hints=False)  # just parsed
    starts, stops = starts.reshape(-1)[first], stops.reshape(-1)[first]
    blob = join_slices(buf, starts, stops, 0x0A)
    texts = blob.tobytes().decode("utf-8", "replace").split("\n")
    texts.pop()  # after the last separator
    if len(texts) != len(starts):  # a slice held "\n" after all: decode one by one
        raw = buf.tobytes()
        texts = [raw[a : max(a, b)].decode("utf-8", "replace")  # clipped as join_slices
                 for a, b in zip(starts.tolist(), stops.tolist(), strict=True)]
    column_of = first % k
    for c, text_of in enumerate(rules):
        if text_of is not None:
            for at in np.flatnonzero(column_of == c).tolist():
                texts[at] = text_of(texts[at])
    values = np.fromiter(texts, dtype=object, count=len(texts))
    return [values[ids[:, c]] for c in range(k)]


def _slice_texts(buf: np.ndarray, starts: np.ndarray, stops: np.ndarray,
                 text_of: Callable[[str], str] | None = None) -> np.ndarray:
    """_text_columns of one column (tests)."""
    return _text_columns(buf, [(starts, stops, text_of)])[0]


class _ParsedFlows:
    """Every chunk of a batch parsed by one kernel call over their concatenated bytes;
    event columns are built from the kernel's offset columns for the requests emitted
    (`columns`), str objects once per distinct value."""

    def __init__(self, chunks: StreamColumns | list[StreamChunk]) -> None:
        self.fallbacks = 0  # flows parsed by parse_messages (the kernel was unsure)
        batch = stream_columns(chunks)
        n = len(batch)
        complete = (batch.ended & ~batch.capped & ~batch.gap).reshape(2 * n)  # _complete
        self.buf = read_only(batch.buf)
        self.whole = np.ascontiguousarray(batch.whole, dtype=np.int64).reshape(n, 2)
        self.table, self.messages = parse_flows(
            self.buf, np.ascontiguousarray(batch.start, dtype=np.int64).reshape(2 * n),
            np.ascontiguousarray(batch.length, dtype=np.int64).reshape(2 * n), complete,
            self.whole.reshape(2 * n))

    def flow(self, index: int, chunk: StreamChunk) -> tuple[
            int, bool, bool, list[int], list[int], Callable[[int], dict]]:
        """(requests, request side malformed, response side malformed, request starts,
        final response body sizes, row(i) -> event row of request i with its response), for
        tests and tools: the analyzer takes `messages` and `columns` instead."""
        n, bad_req, bad_resp, starts, bodies, pair = self.messages_of(index, chunk)
        if not isinstance(pair(0) if n else None, tuple):
            return n, bad_req, bad_resp, starts, bodies, pair
        return n, bad_req, bad_resp, starts, bodies, lambda i: self.rows(*zip(pair(i)))[0]

    def messages_of(self, index: int, chunk: StreamChunk) -> tuple[
            int, bool, bool, list[int], list[int], Callable[[int], tuple[int, int] | dict]]:
        """flow()'s fields, with pair(i) -> (message row of request i, of its response or
        -1) for a flow the kernel parsed, or the event row (a dict) of a flow left to
        parse_messages."""
        f = self.table[index].tolist()  # one row: most batches send few flows this way
        if f[F_FALLBACK]:
            self.fallbacks += 1
            requests, bad_req, responses, bad_resp = reference_parse(
                chunk, tuple(self.whole[index].tolist()))
            return (len(requests), bad_req, bad_resp, [r.start for r in requests],
                    [r.body_bytes for r in responses],
                    lambda i: request_row(requests[i], responses[i] if i < len(responses)
                                          else None))
        first, n_req, resp_first, n_resp = (f[F_REQ_FIRST], f[F_REQ_COUNT], f[F_RESP_FIRST],
                                            f[F_RESP_COUNT])
        return (n_req, bool(f[F_BAD_REQ]), bool(f[F_BAD_RESP]),
                self.messages[first : first + n_req, M_START].tolist(),
                self.messages[resp_first : resp_first + n_resp, M_BODY].tolist(),
                lambda i: (first + i, resp_first + i if i < n_resp else -1))

    def pair_rows(self, index: int, lo: int, hi: int) -> tuple[range, list[int]]:
        """(request rows, response rows or -1) of requests lo..hi-1 of the kernel-parsed
        flow `index`: messages_of's pair(i) for each i."""
        first, resp_first, n_resp = self.table[index, [F_REQ_FIRST, F_RESP_FIRST,
                                                       F_RESP_COUNT]].tolist()
        answered = max(min(hi, n_resp), lo)
        return (range(first + lo, first + hi),
                [*range(resp_first + lo, resp_first + answered), *[-1] * (hi - answered)])

    def columns(self, requests: np.ndarray, responses: np.ndarray) -> dict[str, np.ndarray]:
        """The HTTP-specific event columns of request message rows `requests` with their
        response rows `responses` (-1: none), as request_row gives them (see
        tests/test_http_kernel.py)."""
        starts, stops, status, request_body, response_body = event_fields(
            self.messages, requests, responses)
        method, host, uri, version, user_agent, referrer, mime, user = _texts(
            self.buf, starts, stops, _TEXT_RULES)
        return {
            "method": method,
            "host": host,
            "uri": uri,
            "version": version,
            "user_agent": user_agent,
            "referrer": referrer,
            "status": status,
            "request_body_bytes": request_body,
            "response_body_bytes": response_body,
            "response_mime_type": mime,
            "basic_auth_user": user,
        }

    def rows(self, requests: Sequence[int], responses: Sequence[int]) -> list[dict]:
        """`columns` as one request_row-like dict per request (tests)."""
        columns = self.columns(np.asarray(requests, dtype=np.int64),
                               np.asarray(responses, dtype=np.int64))
        return [{name: column[i].item() if isinstance(column[i], np.generic) else column[i]
                 for name, column in columns.items()} for i in range(len(requests))]


@dataclass
class _Events:
    """The requests a batch emits by _flow_events: each is a kernel message pair (request
    row, response row or -1) or, for flows left to parse_messages, a request_row dict (its
    request entry is then -1 and its position is listed in reference_at)."""

    flows: list[int] = field(default_factory=list)  # index of the event's chunk
    offsets: list[int] = field(default_factory=list)  # the request's start in its flow
    requests: list[int] = field(default_factory=list)
    responses: list[int] = field(default_factory=list)
    reference_at: list[int] = field(default_factory=list)
    reference_rows: list[dict] = field(default_factory=list)

    def add(self, index: int, offset: int, pair: tuple[int, int] | dict) -> None:
        self.flows.append(index)
        self.offsets.append(offset)
        if isinstance(pair, dict):
            self.reference_at.append(len(self.requests))
            self.reference_rows.append(_int64_sizes(pair))
            pair = (-1, -1)
        self.requests.append(pair[0])
        self.responses.append(pair[1])

    def add_rows(self, index: int, offsets: Sequence[int], requests: Sequence[int],
                 responses: Sequence[int]) -> None:
        """add() of several kernel pairs of one flow."""
        self.flows.extend([index] * len(requests))
        self.offsets.extend(offsets)
        self.requests.extend(requests)
        self.responses.extend(responses)


def _ready(done: int, n_requests: int, bodies: Sequence[int],
           chunk: StreamChunk | _FlowFlags) -> int:
    """_flow_events emits requests done..upto-1: each has its response with a known body
    size, or that size cannot come (the server direction hit its cap or a gap), or the flow
    ended (then every request, answered or not)."""
    if chunk.final:
        return n_requests
    upto = min(n_requests, len(bodies))  # a request waits for its response
    if not (chunk.capped[1] or chunk.gap[1]):
        for i in range(done, upto):
            if bodies[i] < 0:
                return i  # body size still to come (chunked, or up to the FIN)
    return upto


def _int64_sizes(row: dict) -> dict:
    """A reference row whose body size does not fit the int64 column (a hostile
    Content-Length of 19+ digits: only parse_messages reads those) says -1, unknown."""
    for name in ("request_body_bytes", "response_body_bytes"):
        if not -1 <= row[name] < 1 << 63:
            row[name] = -1
    return row


def _http_columns(parsed: _ParsedFlows, requests: np.ndarray, responses: np.ndarray,
                  reference_at: np.ndarray, reference_rows: list[dict],
                  skip: Mapping) -> dict[str, np.ndarray]:
    """The HTTP columns (schema order, names in `skip` left out): kernel pairs column-wise,
    reference rows (at positions reference_at) through kind_columns."""
    if not reference_rows:  # the usual batch: every event is a kernel pair
        kernel_at = None
        kernel = parsed.columns(requests, responses)
    else:
        kernel_at = np.flatnonzero(requests >= 0)
        kernel = parsed.columns(requests[kernel_at], responses[kernel_at])
    reference = kind_columns(HTTP, reference_rows, skip=skip) if reference_rows else {}
    out: dict[str, np.ndarray] = {}
    for spec in HTTP.fields:
        if spec.column in skip:
            continue
        if not reference:
            out[spec.column] = kernel[spec.column].astype(spec.dtype, copy=False)
            continue
        column = np.empty(len(requests), dtype=spec.dtype)
        column[kernel_at] = kernel[spec.column]
        column[reference_at] = reference[spec.column]
        out[spec.column] = column
    return out


def keys_at(batch: StreamColumns, rows: np.ndarray) -> list:
    """batch.keys[i] for i in rows, made for those rows only: the FlowKey tuple
    (vlan, client_ip, client_port, server_ip, server_port) StreamBatch.keys builds
    (tests/test_http_emitted.py checks they agree). Chunk lists keep their chunks' keys."""
    if isinstance(batch, ChunkColumns):
        return [batch.keys[i] for i in rows.tolist()]
    return list(zip(batch.vlan[rows].tolist(), batch.client_ip[rows].tolist(),
                    batch.client_port[rows].tolist(), batch.server_ip[rows].tolist(),
                    batch.server_port[rows].tolist(), strict=True))


def _emitted_rows(batch: StreamColumns, rows: np.ndarray, emitted: Mapping) -> np.ndarray:
    """The `rows` (a mask) whose flow key is in `emitted`. The flows emitted in pieces are
    few, so rows are first narrowed to those with one of their client ports, and keys are
    made only for those (not a tuple per row of the batch)."""
    ports = np.fromiter({key[2] for key in emitted}, dtype=np.int64)
    candidates = rows_with_ports(batch.client_port, rows, ports)
    if not candidates.size:
        return candidates
    found = np.fromiter(map(emitted.__contains__, keys_at(batch, candidates)), dtype=bool,
                        count=candidates.size)
    return candidates[found]


class _FlowFlags(NamedTuple):
    """What _flow_events reads of the chunk of a flow the kernel parsed: no StreamChunk is
    built for it (its bytes and packet list cost ~0.1 ms a flow)."""

    key: tuple
    final: bool
    capped: tuple[bool, bool]
    gap: tuple[bool, bool]


def _loop_flows(batch: StreamColumns, parsed: _ParsedFlows, rows: np.ndarray
                ) -> list[StreamChunk | _FlowFlags]:
    """Per row of `rows` (the flows _flow_events handles): its StreamChunk when the kernel
    left it to parse_messages (which reads the chunk's bytes), else its _FlowFlags."""
    out: list[StreamChunk | _FlowFlags] = []
    if not rows.size:
        return out
    reference = parsed.table[rows, F_FALLBACK] != 0
    chunks = iter(chunks_at(batch, rows[reference].tolist()))
    keys = keys_at(batch, rows)
    final = np.asarray(batch.final, dtype=bool)[rows].tolist()
    capped = np.asarray(batch.capped, dtype=bool)[rows].tolist()
    gap = np.asarray(batch.gap, dtype=bool)[rows].tolist()
    for i, own in enumerate(reference.tolist()):
        out.append(next(chunks) if own else _FlowFlags(keys[i], final[i], tuple(capped[i]),
                                                        tuple(gap[i])))
    return out


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
            trim=needed_lengths,  # bulk data that opens no message is not copied
        )
        self.emitted: dict[tuple, int] = {}  # flow key -> requests already emitted

    def process(self, packets: DecodedPackets) -> list[EventBatch]:
        return self._events(self.streams.feed_joined(packets))

    def flush(self) -> list[EventBatch]:
        return self._events(self.streams.flush_joined())

    def _events(self, source: StreamColumns | list[StreamChunk]) -> list[EventBatch]:
        """Events of a StreamBatch (or of a list of chunks: tests, tools). Every flow the
        kernel parsed gets its ready requests in one compiled pass (ready_events), whatever
        was emitted of it before; only the flows tracked in `emitted` or not final (a few a
        batch) are then visited for that state, and only the reference parser's flows (and
        flows whose key repeats among those) go through _flow_events on chunk objects."""
        batch = stream_columns(source)
        parsed = _ParsedFlows(batch)
        n = len(batch)
        emitted = self.emitted
        final = np.asarray(batch.final, dtype=bool).reshape(n)
        tracked = np.zeros(n, dtype=bool)  # a request of the flow was emitted before
        if emitted:
            tracked[_emitted_rows(batch, np.ones(n, dtype=bool), emitted)] = True
        fallback = parsed.table[:, F_FALLBACK] != 0
        visit = np.flatnonzero(~final | tracked | fallback)  # _flow_events' flows before
        keys = keys_at(batch, visit)
        own = fallback[visit]  # visited by _flow_events, in row order
        if len(set(keys)) < len(keys):  # a key twice: each sees what the one before left
            seen: dict[tuple, int] = {}
            for key in keys:
                seen[key] = seen.get(key, 0) + 1
            own |= np.fromiter((seen[key] > 1 for key in keys), dtype=bool, count=len(keys))
        done = np.zeros(n, dtype=np.int64)
        done[visit[own]] = -1
        if emitted:
            for row, key, mine in zip(visit.tolist(), keys, own.tolist(), strict=True):
                if not mine:
                    done[row] = emitted.get(key, 0)
        capped = np.asarray(batch.capped, dtype=bool).reshape(n, 2)
        gap = np.asarray(batch.gap, dtype=bool).reshape(n, 2)
        bad_whole, flows, requests, responses, offsets, upto = ready_events(
            parsed.table, parsed.messages, done, tracked, final, capped[:, 1] | gap[:, 1])
        if bad_whole:
            self._count("http_malformed", bad_whole)
        events = _Events()
        if visit.size:
            self._visit(batch, parsed, visit, keys, own, final, capped, gap, upto, events)
        for key, value in self.streams.stats.items():
            self.stats[f"http_stream.{key}"] = value
        if parsed.fallbacks:
            self._count("http_reference_parses", parsed.fallbacks)
        reference_at = np.asarray(events.reference_at, dtype=np.int64) + flows.size
        if events.flows:  # events in chunk order (each flow's own in request order)
            flows = np.concatenate([flows, np.asarray(events.flows, dtype=np.int64)])
            order = np.argsort(flows, kind="stable")
            flows = flows[order]
            requests = np.concatenate([requests, events.requests])[order]
            responses = np.concatenate([responses, events.responses])[order]
            offsets = np.concatenate([offsets, events.offsets])[order]
            position = np.empty_like(order)
            position[order] = np.arange(order.size)
            reference_at = position[reference_at]
        if not flows.size:
            return []
        self._count("http_requests", int(flows.size))
        times = event_times(batch, flows, offsets)
        columns = endpoint_columns_at(batch, flows, times, self.observer_name,
                                      self.ingress_zone)
        columns.update(_http_columns(parsed, requests, responses, reference_at,
                                     events.reference_rows, skip=columns))
        return [EventBatch(HTTP.name, columns)]

    def _visit(self, batch: StreamColumns, parsed: _ParsedFlows, visit: np.ndarray,
               keys: list, own: np.ndarray, final: np.ndarray, capped: np.ndarray,
               gap: np.ndarray, upto: np.ndarray, events: _Events) -> None:
        """The `emitted` state and counts of the `visit` rows, in row order: `own` rows
        through _flow_events (events added to `events`), the others as _flow_events would
        leave them after ready_events emitted their requests (`upto` of each)."""
        chunks = iter(_loop_flows(batch, parsed, visit[own]))
        table = parsed.table[visit]
        for j, (row, mine) in enumerate(zip(visit.tolist(), own.tolist(), strict=True)):
            if mine:
                chunk = next(chunks)
                try:
                    self._flow_events(chunk, parsed, row, events)
                except Exception:  # noqa: BLE001 - hostile bytes must never stop the sensor
                    self._count("http_malformed")
                    self.emitted.pop(chunk.key, None)
                    if not chunk.final:
                        self.streams.release(chunk.key)
                continue
            key = keys[j]
            n_requests, bad_req, bad_resp = table[j, [F_REQ_COUNT, F_BAD_REQ, F_BAD_RESP]].tolist()
            if final[row]:
                self.emitted.pop(key, None)
                if bad_req or bad_resp:
                    self._count("http_malformed")
                continue
            self.emitted[key] = int(upto[row])
            if not n_requests and (bad_req or capped[row, 0] or gap[row, 0]):
                self.emitted.pop(key, None)  # not HTTP (or nothing readable): stop
                self._count("http_malformed" if bad_req else "http_unreadable")
                self.streams.release(key)

    def _flow_events(self, chunk: StreamChunk | _FlowFlags, parsed: _ParsedFlows, index: int,
                     events: _Events) -> None:
        done = self.emitted.get(chunk.key, 0)
        if chunk.final:
            self.emitted.pop(chunk.key, None)
        n_requests, bad_req, bad_resp, starts, bodies, pair = parsed.messages_of(index, chunk)
        if (bad_req or bad_resp) and chunk.final:
            self._count("http_malformed")
        upto = _ready(done, n_requests, bodies, chunk)
        if upto > done:
            if parsed.table[index, F_FALLBACK]:
                for i in range(done, upto):
                    events.add(index, starts[i], pair(i))
            else:  # kernel rows: ranges, not a Python call per request
                events.add_rows(index, starts[done:upto], *parsed.pair_rows(index, done, upto))
            done = upto
        if not chunk.final:
            self.emitted[chunk.key] = done
            if not n_requests and (bad_req or chunk.capped[0] or chunk.gap[0]):
                self.emitted.pop(chunk.key, None)  # not HTTP (or nothing readable): stop
                self._count("http_malformed" if bad_req else "http_unreadable")
                self.streams.release(chunk.key)

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n
