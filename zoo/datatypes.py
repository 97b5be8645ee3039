"""The KServe v2 tensor datatypes: one table shared by the server's codec and the client."""

from __future__ import annotations

import numpy as np

# KServe v2 datatype -> (numpy dtype, InferTensorContents field). Little-endian on
# the wire, whatever the host. FP16/BF16 travel only as raw bytes; BF16 and BYTES
# have no numpy type here and are refused at model load.
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
}
