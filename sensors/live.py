"""Live capture on Linux: an AF_PACKET socket with a kernel BPF filter -> PacketBatch objects.

The batches go into the same vectorized path as capture files (decode -> flow table +
analyzers). Why this design:
- a raw `socket.socket(AF_PACKET, SOCK_RAW)` and `recvfrom_into` a preallocated buffer is
  the fastest receive path plain Python offers: no scapy packet object is built per frame
  (scapy's L2ListenSocket.recv() dissects every frame; its recv_raw() still allocates a
  bytes object per frame). Frames are written back to back into one bytearray per batch,
  which becomes the batch's `data` (no copy);
- the filter runs in the kernel (SO_ATTACH_FILTER), so unwanted traffic never reaches
  Python. The BPF expression is compiled by libpcap through scapy's
  `scapy.arch.common.compile_filter` (ctypes, no tcpdump binary needed; libpcap0.8 comes
  with scapy's Debian dependencies and with tshark/dumpcap);
- the socket is created with protocol 0 (receives nothing), the filter is attached, and only
  then is it bound to the interface with ETH_P_ALL: no unfiltered frame slips in before the
  filter is in place;
- kernel counters come from getsockopt(SOL_PACKET, PACKET_STATISTICS) (struct
  tpacket_stats: tp_packets, tp_drops; the kernel resets them on every read, so they are
  accumulated here). tp_drops counts frames the kernel dropped because our socket buffer
  was full: the first thing to watch when a sensor cannot keep up. SO_RCVBUF is raised to
  `rcvbuf_bytes` (above net.core.rmem_max this needs CAP_NET_ADMIN: SO_RCVBUFFORCE is
  tried first);
- on loopback every frame is seen twice (outgoing and incoming copy); outgoing copies on
  loopback are skipped, as libpcap does.

Timestamps are the wall clock when the frame is read (time.time_ns(), microsecond-accurate
behind a busy socket at worst by the time a batch takes). PACKET_MMAP (TPACKET_V3) rings
would give kernel timestamps and fewer system calls; not done yet.

Privileges: needs CAP_NET_RAW only (not root): `setcap cap_net_raw+eip $(readlink -f
$(which python3))` for a dedicated interpreter, or systemd `AmbientCapabilities=CAP_NET_RAW`
(deploy/systemd/cirt-sa-sensor.service). Promiscuous mode is requested per socket
(PACKET_MR_PROMISC membership, dropped automatically when the socket closes).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sensors.packets import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW, PacketBatch

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33

# ARPHRD_* (from /sys/class/net/IF/type) -> pcap link type of what AF_PACKET SOCK_RAW gives.
_ARPHRD_TO_LINKTYPE = {1: LINKTYPE_ETHERNET, 772: LINKTYPE_ETHERNET,  # ether, loopback
                       65534: LINKTYPE_RAW, 776: LINKTYPE_RAW, 778: LINKTYPE_RAW}  # none, sit, gre


class LiveCaptureError(OSError):
    """The interface cannot be opened for capture (missing, no CAP_NET_RAW, bad filter)."""


def can_capture() -> tuple[bool, str]:
    """Whether this process may open an AF_PACKET socket (root or CAP_NET_RAW), and why not."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError:
        return False, "needs root or CAP_NET_RAW to open an AF_PACKET socket"
    except (OSError, AttributeError) as exc:
        return False, f"AF_PACKET sockets unavailable: {exc}"
    sock.close()
    return True, ""


def interface_linktype(interface: str) -> int:
    """pcap link type of the frames an AF_PACKET raw socket returns on `interface`."""
    try:
        arphrd = int(Path(f"/sys/class/net/{interface}/type").read_text().strip())
    except (OSError, ValueError):
        raise LiveCaptureError(f"{interface}: no such network interface") from None
    # Unknown hardware types: libpcap falls back to cooked mode; we keep the raw frame and
    # call it SLL only if that is what we would get, else treat it as Ethernet.
    return _ARPHRD_TO_LINKTYPE.get(arphrd, LINKTYPE_LINUX_SLL if arphrd == 0xFFFF
                                   else LINKTYPE_ETHERNET)


def compile_bpf(expression: str, linktype: int, snaplen: int) -> bytes:
    """The BPF program for `expression` as the raw array of struct sock_filter (8 bytes each).

    Raises LiveCaptureError with libpcap's message for an invalid expression."""
    import ctypes

    try:
        from scapy.arch.common import compile_filter
        from scapy.error import Scapy_Exception
    except ImportError as exc:  # pragma: no cover - scapy is a dependency
        raise LiveCaptureError(f"cannot compile BPF filters: {exc}") from None
    try:
        program = compile_filter(expression, linktype=linktype)
    except (Scapy_Exception, ImportError, OSError) as exc:
        raise LiveCaptureError(f"invalid capture filter {expression!r}: {exc}") from None
    size = int(program.bf_len) * 8
    return ctypes.string_at(ctypes.addressof(program.bf_insns.contents), size)


class LiveCapture:
    """Packets of one interface as PacketBatch objects (see module docstring).

    `batches()` yields a batch when `batch_packets` frames are in, when the batch buffer is
    nearly full, or `batch_timeout_s` after the batch's first frame; when nothing arrives
    it yields an empty batch every `batch_timeout_s`, so the caller can keep its own clocks
    (health, flow timeouts) running. `stop()` (e.g. from a signal handler) ends the
    iteration after the current batch.
    """

    def __init__(self, interface: str, bpf: str | None = None, batch_packets: int = 65536,
                 batch_timeout_s: float = 0.5, snaplen: int = 65535, promiscuous: bool = True,
                 buffer_bytes: int = 32 << 20, rcvbuf_bytes: int = 64 << 20) -> None:
        if batch_packets < 1 or snaplen < 64 or batch_timeout_s <= 0:
            raise ValueError("batch_packets >= 1, snaplen >= 64, batch_timeout_s > 0 required")
        self.interface = interface
        self.bpf = bpf or None
        self.batch_packets = int(batch_packets)
        self.batch_timeout_s = float(batch_timeout_s)
        self.snaplen = int(snaplen)
        self.buffer_bytes = max(int(buffer_bytes), self.snaplen * 4)
        self.linktype = interface_linktype(interface)
        self.packets = 0  # frames delivered in batches
        self.bytes = 0  # their wire lengths
        self.kernel_packets = 0  # tp_packets: frames that passed the filter (incl. dropped)
        self.kernel_drops = 0  # tp_drops: frames the kernel dropped (socket buffer full)
        self._stopping = False
        self._skip_outgoing = self._is_loopback(interface)
        self._sock = self._open(promiscuous, rcvbuf_bytes)

    @staticmethod
    def _is_loopback(interface: str) -> bool:
        try:
            return int(Path(f"/sys/class/net/{interface}/type").read_text()) == 772
        except (OSError, ValueError):
            return False

    def _open(self, promiscuous: bool, rcvbuf_bytes: int) -> socket.socket:
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise LiveCaptureError(
                f"{self.interface}: capture needs CAP_NET_RAW (setcap cap_net_raw+eip on the "
                "interpreter, or systemd AmbientCapabilities=CAP_NET_RAW)") from None
        try:
            if self.bpf:
                program = compile_bpf(self.bpf, self.linktype, self.snaplen)
                count = len(program) // 8
                buf = ctypes_buffer(program)
                fprog = struct.pack("HL", count, buf.address)
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
                del buf  # the kernel copied the program
            for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, int(rcvbuf_bytes))
                    break
                except OSError:
                    continue
            sock.bind((self.interface, ETH_P_ALL))
            if promiscuous:
                index = socket.if_nametoindex(self.interface)
                mreq = struct.pack("IHH8s", index, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            sock.settimeout(min(self.batch_timeout_s, 0.2))
            self._kernel_stats(sock)  # reset the counters: count from now on
            self.kernel_packets = self.kernel_drops = 0
        except OSError as exc:
            sock.close()
            if isinstance(exc, LiveCaptureError):
                raise
            raise LiveCaptureError(f"{self.interface}: cannot capture: "
                                   f"{exc.strerror or exc}") from None
        return sock

    def _kernel_stats(self, sock: socket.socket | None = None) -> None:
        sock = sock or self._sock
        packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        self.kernel_packets += packets
        self.kernel_drops += drops

    def stats(self) -> dict[str, int]:
        """Cumulative counters: packets/bytes delivered, kernel packets/drops."""
        if self._sock is not None:
            self._kernel_stats()
        return {"packets": self.packets, "bytes": self.bytes,
                "kernel_packets": self.kernel_packets, "kernel_drops": self.kernel_drops}

    def stop(self) -> None:
        """End `batches()` after the batch being filled (safe from a signal handler)."""
        self._stopping = True

    def batches(self) -> Iterator[PacketBatch]:
        while not self._stopping and self._sock is not None:
            yield self._read_batch()

    def _read_batch(self) -> PacketBatch:
        """One batch: the hot loop, one recvfrom_into per frame into a shared buffer."""
        sock, snaplen = self._sock, self.snaplen
        buf = bytearray(self.buffer_bytes)
        view = memoryview(buf)
        offsets: list[int] = []
        caplens: list[int] = []
        wirelens: list[int] = []
        stamps: list[int] = []
        last_start = self.buffer_bytes - snaplen
        recv = sock.recvfrom_into
        now_ns = time.time_ns
        skip_outgoing = self._skip_outgoing
        pos = 0
        deadline = None  # batch_timeout_s after the batch's first frame
        idle_until = time.monotonic() + self.batch_timeout_s  # empty batch when nothing came
        count = 0
        trunc = socket.MSG_TRUNC
        while count < self.batch_packets and pos <= last_start:
            try:
                wirelen, address = recv(view[pos:pos + snaplen], snaplen, trunc)
            except TimeoutError:  # the socket timeout is short: re-check the clocks
                now = time.monotonic()
                if self._stopping or now >= (deadline if deadline is not None else idle_until):
                    break
                continue
            except InterruptedError:
                continue
            if skip_outgoing and address[2] == PACKET_OUTGOING:
                continue
            caplen = wirelen if wirelen < snaplen else snaplen
            offsets.append(pos)
            caplens.append(caplen)
            wirelens.append(wirelen)
            stamps.append(now_ns())
            pos += caplen
            count += 1
            if deadline is None:
                deadline = time.monotonic() + self.batch_timeout_s
            elif count & 63 == 0 and time.monotonic() >= deadline:
                break
        n = len(offsets)
        self.packets += n
        data = np.frombuffer(buf, dtype=np.uint8)[:max(pos, 1)] if n else np.zeros(1, np.uint8)
        batch = PacketBatch(
            data=data, offset=np.array(offsets, dtype=np.int64),
            caplen=np.array(caplens, dtype=np.uint32), wirelen=np.array(wirelens, dtype=np.uint32),
            ts_ns=np.array(stamps, dtype=np.int64),
            linktype=np.full(n, self.linktype, dtype=np.uint16),
            interface=np.zeros(n, dtype=np.uint16))
        self.bytes += int(batch.wirelen.sum(dtype=np.uint64))
        return batch

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._kernel_stats()
            except OSError:
                pass
            self._sock.close()
            self._sock = None

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ctypes_buffer:  # noqa: N801 - a tiny helper, named like the ctypes objects it wraps
    """Keeps a bytes object alive at a stable address (for struct sock_fprog)."""

    def __init__(self, data: bytes) -> None:
        import ctypes

        self._buf = ctypes.create_string_buffer(data, len(data))
        self.address = ctypes.addressof(self._buf)

