"""Adds a tensor of any dtype to a safetensors file, written by hand: the format is an 8-byte
little-endian header length, a JSON header, then the raw data. For dtypes numpy lacks (F8_E4M3,
F4, ...), the ones an untrusted adapter may carry to trip a server's checks."""

from __future__ import annotations

import json
import struct
from pathlib import Path

# Bits per element of the dtypes these tests write; the data is zeros either way.
BITS = {"F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "U16": 16,
        "U32": 32, "U64": 64, "F32": 32, "F16": 16, "I64": 64}


def add_raw_tensor(path: Path, name: str, dtype: str, shape: list[int]) -> None:
    """Rewrite `path` with one more tensor `name` of `dtype` (zeros), the others kept."""
    data = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    body = data[8 + length:]
    count = 1
    for dim in shape:
        count *= dim
    extra = b"\0" * ((count * BITS[dtype] + 7) // 8)
    header[name] = {"dtype": dtype, "shape": shape,
                    "data_offsets": [len(body), len(body) + len(extra)]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the format's alignment
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + body + extra)
