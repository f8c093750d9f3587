"""Reading and writing safetensors files as numpy arrays, bfloat16 included: memory-mapped whole, or
one tensor at a time into memory.

The format: an 8-byte little-endian header length, a JSON header mapping each tensor name to its
dtype, shape and [begin, end) byte offsets into the data that follows. (safetensors' own numpy
backend cannot represent bfloat16, which most published Llama checkpoints use.)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

import ml_dtypes
import numpy as np

from symtune.errors import UserError

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(bool),
}
CODES = {dtype: code for code, dtype in DTYPES.items()}


def read_header(path: Path) -> tuple[dict[str, dict], int]:
    """A file's tensor entries (name -> dtype, shape, data_offsets) and the byte where its data starts."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    for name, info in header.items():
        if info["dtype"] not in DTYPES:
            raise UserError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    return header, 8 + size


def read_tensor(path: Path, info: dict, data_start: int) -> np.ndarray:
    """One tensor, read into memory (not mapped: a process holds only what it has read)."""
    dtype = DTYPES[info["dtype"]]
    begin, end = info["data_offsets"]
    return np.fromfile(path, dtype=dtype, count=(end - begin) // dtype.itemsize,
                       offset=data_start + begin).reshape(info["shape"])


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of one file as read-only memory-mapped numpy arrays."""
    header, data_start = read_header(path)
    has_data = Path(path).stat().st_size > data_start  # np.memmap refuses an empty range
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start) if has_data else np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        tensors[name] = data[begin:end].view(DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None):
    """Writes tensors (numpy, bfloat16 allowed) to one safetensors file."""
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    arrays = {}
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        header[name] = {"dtype": CODES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        arrays[name] = array
        offset += array.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for array in arrays.values():
            f.write(array.tobytes())
