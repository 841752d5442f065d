"""PNG files for the ComfyUI stand-in, written with zlib + struct (no PIL).

Owns: encoding an 8-bit RGB image with optional tEXt chunks (SaveImage's "prompt"/"workflow"
metadata), deterministic pixels derived from a seed and batch index,.
Must not: know about ComfyUI naming or directories.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def seeded_rgb_rows(width: int, height: int, seed: int, index: int) -> bytes:
    """Filtered scanlines (filter byte 0 + RGB) of a deterministic two-tone gradient."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    r, g, b = digest[0], digest[1], digest[2]
    left = width // 2
    rows = []
    for y in range(height):
        shade = (y * 255) // max(1, height - 1)
        a = bytes(((r + shade) & 255, g, (b + 3 * y) & 255))
        c = bytes((255 - a[0], 255 - a[1], a[2] ^ 0x55))
        rows.append(b"\x00" + a * left + c * (width - left))
    return b"".join(rows)


def encode_png(
    width: int, height: int, rows: bytes, text: dict[str, str] | None = None, compress_level: int = 4
) -> bytes:
    parts = [SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    for key, value in (text or {}).items():
        parts.append(_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace")))
    parts.append(_chunk(b"IDAT", zlib.compress(rows, compress_level)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)
