"""The KServe v2 tensor datatypes: one table shared by the server's codec and the client."""

from __future__ import annotations

import numpy as np

from zoo.errors import InvalidArgumentError

# KServe v2 datatype -> (numpy dtype, InferTensorContents field). Little-endian on
# the wire, whatever the host. FP16/BF16 travel only as raw bytes; BF16 has no numpy
# type here and is refused at model load. BYTES (strings) are numpy object arrays,
# whose raw form is length-prefixed (encode_bytes), never the array's own bytes.
DATATYPES: dict[str, tuple[np.dtype, str | None]] = {
    "BOOL": (np.dtype("?"), "bool_contents"),
    "UINT8": (np.dtype("u1"), "uint_contents"),
    "UINT16": (np.dtype("<u2"), "uint_contents"),
    "UINT32": (np.dtype("<u4"), "uint_contents"),
    "UINT64": (np.dtype("<u8"), "uint64_contents"),
    "INT8": (np.dtype("i1"), "int_contents"),
    "INT16": (np.dtype("<i2"), "int_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "FP16": (np.dtype("<f2"), None),
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
    "BYTES": (np.dtype(object), "bytes_contents"),
}
BYTES = "BYTES"


def encode_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor in KServe v2's raw form: each element's length (4 bytes, little
    endian), then its bytes, row-major. A str element goes as UTF-8."""
    parts = []
    for item in array.ravel():
        data = item if isinstance(item, bytes) else str(item).encode()
        parts += [len(data).to_bytes(4, "little"), data]
    return b"".join(parts)


def decode_bytes(raw: bytes) -> list[bytes]:
    """The elements of a raw BYTES tensor."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgumentError(f"BYTES tensor: a length prefix is cut at byte {offset}")
        size = int.from_bytes(raw[offset : offset + 4], "little")
        offset += 4
        if offset + size > len(raw):
            raise InvalidArgumentError(
                f"BYTES tensor: an element of {size} bytes runs past the end ({len(raw)} bytes)"
            )
        items.append(raw[offset : offset + size])
        offset += size
    return items
