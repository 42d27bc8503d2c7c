"""Clear-text login events: one "login" event per login attempt over FTP, Telnet, SMTP AUTH,
POP3 and IMAP, with the user name, the outcome and the server reply that decided it.
The password is never kept: it is parsed only to be skipped.

Input: sensors.tcp_stream.StreamCollector over the configured server ports
(`services`: port -> ftp|telnet|smtp|pop3|imap; defaults 21, 23, 25, 587, 110, 143). Each
time a flow's collected bytes grow, both directions are re-read from the start (bounded by
the collector's max_bytes_per_dir) and attempts not yet emitted are emitted once their
outcome is known; at the flow's end, undecided attempts are emitted with outcome unknown.
After a successful login the flow is released (nothing more is needed).

Protocols (command/reply protocols pair the i-th client command with the i-th complete
server reply after the greeting, which is how RFC 959/5321/1939 servers answer, pipelined
or not):
- FTP: USER then PASS; reply to PASS 230/202 success, 530 (any 5xx) failure; a reply to
  USER of 230 is a login without password (success), a 5xx is a failure.
- SMTP: AUTH PLAIN (initial response or after 334), AUTH LOGIN (user and password as two
  334 rounds, or the user as initial response), AUTH CRAM-MD5 (user is the first word of
  the response); 235 success, 4xx/5xx failure. DATA bodies are skipped (up to "."),
  STARTTLS ends the clear text.
- POP3: USER/PASS (+OK success of PASS, -ERR failure; -ERR to USER is a failure), APOP
  user digest, AUTH as in SMTP with "+ " continuations. Multi-line replies of CAPA, LIST,
  UIDL, RETR, TOP are skipped. STLS ends the clear text.
- IMAP: "tag LOGIN user pass" and "tag AUTHENTICATE PLAIN|LOGIN", matched to the tagged
  reply: OK success, NO/BAD failure. Quoted strings and literals ({n}) are understood.
  STARTTLS ends the clear text.
- Telnet: option negotiation (IAC ...) is removed; the server text is split at login
  prompts ("login:", "username:"); an attempt is a login prompt followed by a password
  prompt. The user is the text the server echoes after the login prompt, else the client's
  line at that position; the outcome is failure when the server then prints "incorrect",
  "failed", "denied" or "invalid", success when it prints "Last login", "Welcome" or a
  line ending in a shell prompt ("$ ", "# ", "> ", "% "), unknown otherwise. Limits:
  servers with other prompts or messages, non-echoing line mode with extra client lines,
  and localized messages are not recognised (outcome unknown, or no attempt seen).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import numpy as np

from pipeline.schema import LOGIN, EventBatch
from sensors.analyzer import Analyzer
from sensors.community_id import community_id_column
from sensors.packets import IP_DTYPE, DecodedPackets, constant_text, plain_vlan
from sensors.stream_prefilter import PortPrefilter
from sensors.tcp_stream import StreamChunk, StreamCollector

DEFAULT_SERVICES = {21: "ftp", 23: "telnet", 25: "smtp", 587: "smtp", 110: "pop3",
                    143: "imap"}
MAX_LINE = 4096  # longer lines are cut (the rest of a line is never needed)
MAX_USER = 256  # characters of a user name kept
MAX_REPLY = 200  # characters of the deciding reply kept
MAX_ATTEMPTS_PER_FLOW = 1000


@dataclass
class Attempt:
    """One login attempt found in a flow: who, when (client byte offset), and the result."""

    user: str
    offset: int  # client stream offset of the command carrying the credentials
    outcome: int | None  # 1, 0, or None while the reply is not seen
    reply: str = ""


@dataclass
class Line:
    text: bytes
    offset: int


def split_lines(data: bytes) -> tuple[list[Line], bool]:
    """CRLF/LF-terminated lines (without terminator) and whether a partial line remains."""
    lines: list[Line] = []
    pos = 0
    size = len(data)
    while pos < size:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return lines, True
        text = data[pos:nl]
        if text.endswith(b"\r"):
            text = text[:-1]
        lines.append(Line(text[:MAX_LINE], pos))
        pos = nl + 1
    return lines, False


def _text(raw: bytes, limit: int) -> str:
    return raw[:limit].decode("utf-8", "replace")


# --- replies of command/reply protocols -------------------------------------------------------

@dataclass
class Reply:
    code: str  # "230", "+OK", "-ERR", "+" (continuation)
    text: str  # first line, cut to MAX_REPLY
    offset: int


def numeric_replies(lines: list[Line]) -> list[Reply]:
    """FTP/SMTP replies: "ddd text", multi-line "ddd-..." up to the "ddd " line."""
    out: list[Reply] = []
    pending: Reply | None = None
    for line in lines:
        t = line.text
        code = t[:3]
        if pending is not None:
            if code == pending.code.encode() and t[3:4] in (b" ", b""):
                out.append(pending)
                pending = None
            continue
        if len(t) >= 3 and code.isdigit():
            reply = Reply(code.decode(), _text(t, MAX_REPLY), line.offset)
            if t[3:4] == b"-":
                pending = reply
            else:
                out.append(reply)
    return out


def _b64(raw: bytes) -> bytes | None:
    try:
        return base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _sasl_user(mechanism: str, responses: list[bytes]) -> str:
    """User name from SASL responses (base64 lines); the password part is dropped."""
    if not responses:
        return ""
    first = _b64(responses[0])
    if first is None:
        return ""
    if mechanism == "PLAIN":
        parts = first.split(b"\0")
        return _text(parts[1], MAX_USER) if len(parts) >= 3 else ""
    if mechanism == "LOGIN":
        return _text(first, MAX_USER)
    if mechanism == "CRAM-MD5":
        return _text(first.rsplit(b" ", 1)[0], MAX_USER)
    return ""


SASL_ROUNDS = {"PLAIN": 1, "LOGIN": 2, "CRAM-MD5": 1}


# --- FTP ---------------------------------------------------------------------------------------

def ftp_attempts(client: list[Line], server: list[Line]) -> list[Attempt]:
    replies = numeric_replies(server)[1:]  # the first reply is the greeting
    attempts: list[Attempt] = []
    user = ""
    for i, line in enumerate(client):
        word, _, arg = line.text.partition(b" ")
        verb = word.upper()
        reply = replies[i] if i < len(replies) else None
        if verb == b"USER":
            user = _text(arg.strip(), MAX_USER)
            if reply is not None and (reply.code == "230" or reply.code[0] in "45"):
                # logged in without a password, or the user is refused outright
                attempts.append(Attempt(user, line.offset, 1 if reply.code == "230" else 0,
                                        reply.text))
        elif verb == b"PASS":
            outcome = None
            if reply is not None:
                outcome = 1 if reply.code in ("230", "202") else (
                    0 if reply.code[0] in "45" else -1)
            attempts.append(Attempt(user, line.offset, outcome, reply.text if reply else ""))
    return attempts


# --- SMTP and POP3 (command/reply with SASL) --------------------------------------------------

def _sasl_exchange(client: list[Line], i: int, mechanism: str, initial: bytes,
                   next_reply, is_continuation) -> tuple[int, list[bytes], Reply | None]:
    """Run one AUTH exchange from client line i: (next line index, responses, final reply)."""
    responses = [initial] if initial else []
    reply = next_reply()
    while reply is not None and is_continuation(reply) and i + 1 < len(client):
        i += 1
        text = client[i].text
        if text == b"*":  # client cancels
            reply = next_reply()
            break
        responses.append(text)
        reply = next_reply()
    if reply is not None and is_continuation(reply):
        reply = None  # waiting for the client
    return i, responses, reply


def smtp_attempts(client: list[Line], server: list[Line]) -> list[Attempt]:
    replies = iter(numeric_replies(server)[1:])
    attempts: list[Attempt] = []

    def next_reply() -> Reply | None:
        return next(replies, None)

    i = 0
    while i < len(client):
        line = client[i]
        word, _, rest = line.text.partition(b" ")
        verb = word.upper()
        if verb == b"AUTH":
            mech_raw, _, initial = rest.strip().partition(b" ")
            mechanism = mech_raw.upper().decode("ascii", "replace")
            i, responses, reply = _sasl_exchange(client, i, mechanism, initial.strip(),
                                                 next_reply, lambda r: r.code == "334")
            attempts.append(_sasl_attempt(mechanism, responses, line.offset, reply,
                                          lambda r: r.code.startswith("2"),
                                          lambda r: r.code[0] in "45"))
        elif verb == b"DATA":
            reply = next_reply()
            if reply is not None and reply.code == "354":
                while i + 1 < len(client) and client[i + 1].text != b".":
                    i += 1
                i += 1
                next_reply()  # the reply to the end of data
        elif verb in (b"STARTTLS", b"BDAT"):
            break  # encrypted or binary from here on
        else:
            next_reply()
        i += 1
    return attempts


def _sasl_attempt(mechanism: str, responses: list[bytes], offset: int, reply: Reply | None,
                  ok, failed) -> Attempt:
    outcome = None
    if reply is not None:
        outcome = 1 if ok(reply) else (0 if failed(reply) else -1)
    return Attempt(_sasl_user(mechanism, responses), offset, outcome,
                   reply.text if reply else "")


def pop3_replies(lines: list[Line]) -> list[Reply]:
    out = []
    for line in lines:
        t = line.text
        if t.startswith(b"+OK") or t.startswith(b"-ERR") or t == b"+" or t.startswith(b"+ "):
            code = "+OK" if t.startswith(b"+OK") else ("-ERR" if t.startswith(b"-ERR") else "+")
            out.append(Reply(code, _text(t, MAX_REPLY), line.offset))
        else:
            out.append(Reply("", "", line.offset))  # a line of a multi-line reply
    return out


MULTILINE_POP3 = {b"CAPA", b"RETR", b"TOP"}  # LIST/UIDL only without argument


def pop3_attempts(client: list[Line], server: list[Line]) -> list[Attempt]:
    lines = pop3_replies(server)
    pos = 1  # skip the greeting

    def next_reply() -> Reply | None:
        nonlocal pos
        while pos < len(lines) and not lines[pos].code:
            pos += 1  # stray text
        if pos >= len(lines):
            return None
        pos += 1
        return lines[pos - 1]

    def skip_multiline() -> None:
        nonlocal pos
        while pos < len(server) and server[pos].text != b".":
            pos += 1
        pos += 1

    attempts: list[Attempt] = []
    user = ""
    i = 0
    while i < len(client):
        line = client[i]
        word, _, rest = line.text.partition(b" ")
        verb = word.upper()
        if verb == b"AUTH" and rest.strip():
            mech_raw, _, initial = rest.strip().partition(b" ")
            mechanism = mech_raw.upper().decode("ascii", "replace")
            i, responses, reply = _sasl_exchange(client, i, mechanism, initial.strip(),
                                                 next_reply, lambda r: r.code == "+")
            attempts.append(_sasl_attempt(mechanism, responses, line.offset, reply,
                                          lambda r: r.code == "+OK",
                                          lambda r: r.code == "-ERR"))
        elif verb in (b"STLS",):
            break
        else:
            reply = next_reply()
            ok = reply is not None and reply.code == "+OK"
            if verb == b"USER":
                user = _text(rest.strip(), MAX_USER)
                if reply is not None and reply.code == "-ERR":
                    attempts.append(Attempt(user, line.offset, 0, reply.text))
            elif verb == b"PASS":
                attempts.append(Attempt(user, line.offset, _plus(reply),
                                        reply.text if reply else ""))
            elif verb == b"APOP":
                attempts.append(Attempt(_text(rest.split(b" ")[0], MAX_USER), line.offset,
                                        _plus(reply), reply.text if reply else ""))
            elif ok and (verb in MULTILINE_POP3 or (verb in (b"LIST", b"UIDL", b"AUTH")
                                                    and not rest.strip())):
                skip_multiline()
        i += 1
    return attempts


def _plus(reply: Reply | None) -> int | None:
    if reply is None:
        return None
    return 1 if reply.code == "+OK" else (0 if reply.code == "-ERR" else -1)


# --- IMAP --------------------------------------------------------------------------------------

_IMAP_ATOM = re.compile(rb'\s*(?:"((?:[^"\\]|\\.)*)"|\{(\d+)\+?\}$|([^\s"]+))')


def _imap_strings(args: bytes, following: list[Line], count: int) -> tuple[list[bytes], int]:
    """Up to `count` IMAP strings from `args` (atoms, quoted, literals continued on the
    following lines) -> (strings, client lines consumed after the command line)."""
    out: list[bytes] = []
    used = 0
    rest = args
    while len(out) < count:
        m = _IMAP_ATOM.match(rest)
        if m is None:
            break
        if m.group(1) is not None:
            out.append(re.sub(rb"\\(.)", rb"\1", m.group(1)))
            rest = rest[m.end():]
        elif m.group(2) is not None:
            if used >= len(following):
                break
            size = int(m.group(2))
            text = following[used].text
            used += 1
            out.append(text[:size])
            rest = text[size:]
        else:
            out.append(m.group(3))
            rest = rest[m.end():]
    return out, used


def imap_attempts(client: list[Line], server: list[Line]) -> list[Attempt]:
    tagged: dict[bytes, Reply] = {}
    for line in server:
        tag, _, rest = line.text.partition(b" ")
        status = rest.split(b" ", 1)[0].upper()
        if tag not in (b"*", b"+") and status in (b"OK", b"NO", b"BAD") and tag not in tagged:
            tagged[tag] = Reply(status.decode(), _text(line.text, MAX_REPLY), line.offset)
    attempts: list[Attempt] = []
    i = 0
    while i < len(client):
        line = client[i]
        parts = line.text.split(b" ", 2)
        tag = parts[0]
        verb = parts[1].upper() if len(parts) > 1 else b""
        args = parts[2] if len(parts) > 2 else b""
        reply = tagged.get(tag)
        outcome = None
        if reply is not None:
            outcome = 1 if reply.code == "OK" else 0
        if verb == b"LOGIN":
            strings, used = _imap_strings(args, client[i + 1:], 2)
            i += used
            user = _text(strings[0], MAX_USER) if strings else ""
            attempts.append(Attempt(user, line.offset, outcome, reply.text if reply else ""))
        elif verb == b"AUTHENTICATE":
            mech_raw, _, initial = args.strip().partition(b" ")
            mechanism = mech_raw.upper().decode("ascii", "replace")
            responses = [initial.strip()] if initial.strip() else []
            rounds = SASL_ROUNDS.get(mechanism, 1)
            while len(responses) < rounds and i + 1 < len(client):
                nxt = client[i + 1].text
                if nxt.split(b" ", 1)[0] == tag or b" " in nxt.strip():
                    break  # not a base64 response line
                i += 1
                responses.append(nxt)
            attempts.append(Attempt(_sasl_user(mechanism, responses), line.offset, outcome,
                                    reply.text if reply else ""))
        elif verb == b"STARTTLS":
            break
        i += 1
    return attempts


# --- Telnet ------------------------------------------------------------------------------------

IAC, SB, SE = 0xFF, 0xFA, 0xF0
_LOGIN_PROMPT = re.compile(rb"(?<!last )(?:login|username|user name)\s*:[ \t]*", re.I)
_PASSWORD_PROMPT = re.compile(rb"password\s*:", re.I)
_FAILED = re.compile(rb"incorrect|failed|denied|invalid", re.I)
_SUCCESS = re.compile(rb"last login|welcome|[$#>%] ?$", re.I | re.M)


def strip_telnet(data: bytes) -> bytes:
    """Remove IAC commands and subnegotiations; IAC IAC is a literal 0xFF."""
    if IAC not in data:
        return data
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b != IAC:
            out.append(b)
            i += 1
            continue
        if i + 1 >= n:
            break
        cmd = data[i + 1]
        if cmd == IAC:
            out.append(IAC)
            i += 2
        elif cmd == SB:
            end = data.find(bytes([IAC, SE]), i + 2)
            i = n if end < 0 else end + 2
        elif 0xFB <= cmd <= 0xFE:  # WILL WONT DO DONT + option
            i += 3
        else:
            i += 2
    return bytes(out)


def _telnet_client_lines(data: bytes) -> list[Line]:
    text = strip_telnet(data).replace(b"\r\0", b"\n").replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return split_lines(text)[0]


def telnet_attempts(client_data: bytes, server_data: bytes) -> tuple[list[Attempt], bool]:
    """Attempts and whether the last one may still change (more server text may come)."""
    server = strip_telnet(server_data)
    client_lines = _telnet_client_lines(client_data)
    prompts = list(_LOGIN_PROMPT.finditer(server))
    attempts: list[Attempt] = []
    for k, prompt in enumerate(prompts):
        end = prompts[k + 1].start() if k + 1 < len(prompts) else len(server)
        segment = server[prompt.end():end]
        password = _PASSWORD_PROMPT.search(segment)
        if password is None:
            continue
        echoed = segment[:password.start()].split(b"\n", 1)[0].strip(b"\r\n\0 ")
        user_raw = echoed
        if not user_raw and 2 * k < len(client_lines):
            user_raw = client_lines[2 * k].text.strip()
        after = segment[password.end():]
        outcome, reply = None, b""
        if m := _FAILED.search(after):
            outcome, reply = 0, _line_at(after, m.start())
        elif m := _SUCCESS.search(after):
            outcome, reply = 1, _line_at(after, m.start())
        elif k + 1 < len(prompts):
            outcome = -1  # a new prompt came without a recognised verdict
        offset = client_lines[2 * k + 1].offset if 2 * k + 1 < len(client_lines) else 0
        attempts.append(Attempt(_text(user_raw, MAX_USER), offset, outcome,
                                _text(reply, MAX_REPLY)))
    return attempts, True


def _line_at(text: bytes, at: int) -> bytes:
    start = text.rfind(b"\n", 0, at) + 1
    end = text.find(b"\n", at)
    return text[start:end if end >= 0 else len(text)].strip(b"\r\0 ")


# --- the analyzer ------------------------------------------------------------------------------

def login_attempts(service: str, client_data: bytes, server_data: bytes) -> list[Attempt]:
    """Login attempts of one flow's collected bytes (see module doc)."""
    if service == "telnet":
        return telnet_attempts(client_data, server_data)[0][:MAX_ATTEMPTS_PER_FLOW]
    client, _ = split_lines(client_data)
    server, _ = split_lines(server_data)
    parse = {"ftp": ftp_attempts, "smtp": smtp_attempts, "pop3": pop3_attempts,
             "imap": imap_attempts}.get(service)
    if parse is None:
        return []
    return parse(client, server)[:MAX_ATTEMPTS_PER_FLOW]


class LoginAnalyzer(Analyzer):
    """Clear-text logins on the configured service ports (see module doc).

    Settings: services (mapping port -> ftp|telnet|smtp|pop3|imap), max_flows,
    max_bytes_per_dir, idle_timeout_s.
    """

    def __init__(self, config, observer_name: str, ingress_zone: str) -> None:
        super().__init__(config, observer_name, ingress_zone)
        services = config.get("services") or DEFAULT_SERVICES
        self.services = {int(port): str(name) for port, name in services.items()}
        self.collector = StreamCollector(
            set(self.services),
            max_bytes_per_dir=int(config.get("max_bytes_per_dir", 16384)),
            max_flows=int(config.get("max_flows", 10000)),
            idle_timeout_s=float(config.get("idle_timeout_s", 300)),
            max_packets_meta=int(config.get("max_packets", 256)),
        )
        # The collector sees only rows on the service ports (the same chunks, without
        # hashing every TCP packet of the link); None: every row.
        self.prefilter: PortPrefilter | None = PortPrefilter(set(self.services))
        self.emitted: dict[tuple, int] = {}  # flow key -> attempts already emitted

    def process(self, packets: DecodedPackets) -> list[EventBatch]:
        if self.prefilter is None:
            return self._events(self.collector.feed(packets))
        return self._events(self.prefilter.feed(self.collector, packets))

    def flush(self) -> list[EventBatch]:
        out = self._events(self.collector.flush())
        for key, value in self.collector.stats.items():
            self.stats[f"login_stream_{key}"] = value
        return out

    def _events(self, chunks: list[StreamChunk]) -> list[EventBatch]:
        rows: list[tuple[StreamChunk, str, Attempt, int]] = []
        for chunk in chunks:
            service = self.services.get(chunk.server_port)
            if service is None:  # the collector's guess of roles put the port on the client
                if not chunk.final:
                    self.collector.release(chunk.key)
                continue
            try:
                attempts = login_attempts(service, chunk.client_data, chunk.server_data)
            except Exception:  # a parser bug must not stop the sensor; counted to be seen
                self.stats["login_parser_error"] = self.stats.get("login_parser_error", 0) + 1
                attempts = []
            done = self.emitted.get(chunk.key, 0)
            new = attempts[done:]
            if not chunk.final:
                decided = 0
                while decided < len(new) and new[decided].outcome is not None:
                    decided += 1
                new = new[:decided]
            for attempt in new:
                ts = _offset_time(chunk, attempt.offset)
                rows.append((chunk, service, attempt, ts))
            if chunk.final:
                self.emitted.pop(chunk.key, None)
            elif any(a.outcome == 1 for a in new):
                self.emitted.pop(chunk.key, None)
                self.collector.release(chunk.key)  # logged in: nothing more is needed
            elif new:
                self.emitted[chunk.key] = done + len(new)
        if not rows:
            return []
        self.stats["login_attempts"] = self.stats.get("login_attempts", 0) + len(rows)
        return [self._batch(rows)]

    def _batch(self, rows: list[tuple[StreamChunk, str, Attempt, int]]) -> EventBatch:
        n = len(rows)
        src_ip = np.frombuffer(b"".join(c.client_ip for c, _, _, _ in rows), dtype=IP_DTYPE)
        dst_ip = np.frombuffer(b"".join(c.server_ip for c, _, _, _ in rows), dtype=IP_DTYPE)
        transport = np.full(n, 6, dtype=np.uint8)
        src_port = np.asarray([c.client_port for c, _, _, _ in rows], dtype=np.uint16)
        dst_port = np.asarray([c.server_port for c, _, _, _ in rows], dtype=np.uint16)
        columns = {
            "timestamp": np.asarray([ts for _, _, _, ts in rows], dtype=np.int64),
            "observer_name": constant_text(n, self.observer_name),
            "ingress_zone": constant_text(n, self.ingress_zone),
            "src_ip": src_ip,
            "dst_ip": dst_ip,
            "src_port": src_port,
            "dst_port": dst_port,
            "transport": transport,
            "vlan": plain_vlan(np.asarray([c.vlan for c, _, _, _ in rows], dtype=np.int64)),
            "community_id": community_id_column(src_ip, dst_ip, transport, src_port, dst_port),
            "service": _objects([s for _, s, _, _ in rows]),
            "user": _objects([a.user for _, _, a, _ in rows]),
            "outcome": np.asarray([-1 if a.outcome is None else a.outcome
                                   for _, _, a, _ in rows], dtype=np.int8),
            "reply": _objects([a.reply for _, _, a, _ in rows]),
        }
        order = np.argsort(columns["timestamp"], kind="stable")
        return EventBatch(LOGIN.name, {k: v[order] for k, v in columns.items()})


def _offset_time(chunk: StreamChunk, offset: int) -> int:
    """Time of the client segment holding stream byte `offset` (from the collector's packet
    list); the flow's last time when the list does not reach that far."""
    end = 0
    for ts, direction, length in chunk.packets:
        if direction != 0:
            continue
        end += length
        if offset < end:
            return ts
    return chunk.last_ts


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
