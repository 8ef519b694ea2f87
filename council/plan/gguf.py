"""Read a GGUF file's metadata and tensor table without touching tensor data.

gguf's GGUFReader decodes every array element into numpy objects (16 s for a 150k-token vocabulary on
2 cores); planning needs the header in milliseconds, so we walk it with `struct` over an mmap and use the
gguf package only for its quantisation block sizes.
"""

from __future__ import annotations

import functools
import mmap
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from council.errors import CouncilError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
GGML_MAX_DIMS = 4  # ggml.h
DEFAULT_ALIGNMENT = 32  # gguf.h GGUF_DEFAULT_ALIGNMENT: where `general.alignment` is not set
# llama.cpp reads no array of arrays (gguf.cpp: "invalid GGUF type"), though gguf's writer can write one: refused,
# as llama-server would refuse the file at every start.
# The versions llama.cpp reads (gguf.cpp: v1 "no longer supported", newer ones unknown to it).
VERSIONS = (2, 3)
# Longest key and string value taken as read: a corrupt length read the rest of the file as one string (2 GB of
# memory for a copy of a 1 GB model), where real keys are short and the longest values (chat templates) kilobytes.
MAX_KEY_BYTES = 1 << 16
MAX_STRING_BYTES = 1 << 26


class GgufError(CouncilError, ValueError):
    """Not a GGUF file, or a truncated one."""


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]  # ggml order: ne0 first
    type: int
    n_bytes: int


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array we did not keep (a vocabulary, merges): its element type and length."""

    type: int
    length: int


@dataclass(frozen=True)
class GgufInfo:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, Tensor] = field(repr=False)
    file_bytes: int

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        """`{arch}.suffix`, e.g. `arch_key("block_count")`."""
        return self.metadata.get(f"{self.arch}.{suffix}", default)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors.values())

    @property
    def vocab_size(self) -> int:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, ArrayInfo):
            return tokens.length
        return len(tokens) if isinstance(tokens, list) else 0

    @property
    def has_chat_template(self) -> bool:
        return bool(self.metadata.get("tokenizer.chat_template"))


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path
        self.where = "the header"  # what is being read, for the error a truncated file raises

    def truncated(self) -> GgufError:
        return GgufError(f"{self.path}: truncated GGUF: {self.where} runs past the end of the file "
                         f"({len(self.buf)} bytes)")

    def need(self, size: int) -> None:
        """Fail as a GgufError, not a struct.error or a bogus slice, before reading `size` bytes past the end."""
        if self.pos + size > len(self.buf):
            raise self.truncated()

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, limit: int = MAX_STRING_BYTES) -> str:
        length = self.unpack("<Q")
        if length > limit:
            raise GgufError(f"{self.path}: malformed GGUF: {self.where} is a string of {length} bytes (at most "
                            f"{limit} taken: a corrupt length)")
        self.need(length)
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        """Step over `count` strings (a vocabulary): a tight loop, since each length sits before its bytes."""
        pos, buf, unpack = self.pos, self.buf, _U64.unpack_from
        try:
            for _ in range(count):
                pos += 8 + unpack(buf, pos)[0]
        # struct.error: a length read from past the end (the file is cut short inside the array); OverflowError:
        # a corrupt length (2^63 and up) walked the offset past what unpack_from takes.
        except (struct.error, OverflowError):
            raise self.truncated() from None
        if pos > len(buf):
            raise self.truncated()
        self.pos = pos

    def value(self, vtype: int, keep_arrays: bool) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.unpack("<I")
            if etype == _ARRAY or (etype not in _SCALARS and etype != _STRING):
                what = "an array of arrays" if etype == _ARRAY else f"an array of unknown GGUF value type {etype}"
                raise GgufError(f"{self.path}: malformed GGUF: {self.where} is {what}, which llama.cpp does not "
                                "read")
            count = self.unpack("<Q")
            small = count <= 64
            if etype in _SCALARS:
                size = struct.calcsize(_SCALARS[etype])
                self.need(size * count)
                if keep_arrays or small:
                    values = list(struct.unpack_from(f"<{count}{_SCALARS[etype][1]}", self.buf, self.pos))
                    self.pos += size * count
                    return values
                self.pos += size * count
                return ArrayInfo(etype, count)
            if etype == _STRING:
                if keep_arrays or small:
                    return [self.string() for _ in range(count)]
                self.skip_strings(count)
                return ArrayInfo(etype, count)
        raise GgufError(f"{self.path}: {self.where} has unknown GGUF value type {vtype}")


def tensor_bytes(shape: tuple[int, ...], ggml_type: int) -> int:
    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    count = 1
    for dim in shape:
        count *= dim
    return count // block * type_size


def _check_data_extent(path: Path, metadata: dict[str, Any], table_end: int, tensors: dict[str, Tensor],
                       offsets: dict[str, int], size: int) -> None:
    """Refuse a file cut short inside its tensor data (an interrupted copy or download): its header reads fine,
    and only llama-server would find it, after every start failed. The data section starts after the tensor
    table, aligned to `general.alignment` (gguf.cpp)."""
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GgufError(f"{path}: malformed GGUF: general.alignment is {alignment!r}, not a power of 2")
    start = -(-table_end // alignment) * alignment
    ends = {name: start + offsets[name] + t.n_bytes for name, t in tensors.items()}
    past = next((name for name, end in ends.items() if end > size), None)
    if past is not None:
        raise GgufError(f"{path}: truncated GGUF: the data of tensor `{past}` runs past the end of the file "
                        f"({size} bytes of the {max(ends.values())} its tensor table needs)")


def read_gguf(path: Path | str, *, keep_arrays: bool = False) -> GgufInfo:
    """Header, metadata and tensor table; big arrays (vocabularies) only as lengths unless `keep_arrays`.

    Cached per file version (size and mtime), since planning, checking and launching read the same files.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise GgufError(f"{path}: cannot read GGUF: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):  # a FIFO's open waits for a writer: forever, on the caller's thread
        raise GgufError(f"{path}: cannot read GGUF: not a file")
    return _read_gguf(path, st.st_size, st.st_mtime_ns, keep_arrays)


@functools.lru_cache(maxsize=64)
def _read_gguf(path: Path, _size: int, _mtime_ns: int, keep_arrays: bool) -> GgufInfo:
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf, path)
            if buf[:4] != b"GGUF":
                raise GgufError(f"{path}: not a GGUF file (bad magic)")
            cur.pos = 4
            version = cur.unpack("<I")
            if version not in VERSIONS:
                raise GgufError(f"{path}: GGUF version {version}: llama.cpp reads versions "
                                f"{' and '.join(map(str, VERSIONS))}")
            n_tensors = cur.unpack("<Q")
            n_kv = cur.unpack("<Q")
            metadata: dict[str, Any] = {}
            for i in range(n_kv):
                cur.where = f"metadata entry {i}"
                key = cur.string(MAX_KEY_BYTES)
                cur.where = f"metadata `{key}`"
                metadata[key] = cur.value(cur.unpack("<I"), keep_arrays)
            tensors: dict[str, Tensor] = {}
            offsets: dict[str, int] = {}
            for i in range(n_tensors):
                cur.where = f"tensor entry {i}"
                name = cur.string(MAX_KEY_BYTES)
                cur.where = f"tensor `{name}`"
                n_dims = cur.unpack("<I")
                if n_dims > GGML_MAX_DIMS:  # garbage: reading that many dimensions would walk the whole file
                    raise GgufError(f"{path}: tensor `{name}` has {n_dims} dimensions (ggml allows {GGML_MAX_DIMS})")
                shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
                ggml_type = cur.unpack("<I")
                offsets[name] = cur.unpack("<Q")  # into the data section
                try:
                    n_bytes = tensor_bytes(shape, ggml_type)
                except (KeyError, ValueError) as exc:
                    raise GgufError(f"{path}: tensor {name} has unknown type {ggml_type}") from exc
                tensors[name] = Tensor(name, shape, ggml_type, n_bytes)
            size = len(buf)
            if tensors:
                _check_data_extent(path, metadata, cur.pos, tensors, offsets, size)
    except (OSError, ValueError, struct.error, OverflowError, RecursionError) as exc:
        # None of the last three is a ValueError: without them a read the checks above missed (a huge length, a
        # deep nest) would be a traceback, not one line.
        if isinstance(exc, GgufError):
            raise
        raise GgufError(f"{path}: cannot read GGUF: {exc}") from exc
    return GgufInfo(path=path, version=version, metadata=metadata, tensors=tensors, file_bytes=size)
