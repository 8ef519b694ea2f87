"""GGUF files that are cut short or malformed: one clear line from the reader, the estimate and the commands.

The broken files are the synthetic qwen35 model (a real GGUF from `gguf`'s writer) cut or patched in its header.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from council.plan.estimate import EstimateError, model_shape
from council.plan.gguf import GgufError, read_gguf
from tests.conftest import run_cli
from tests.policies import policy_yaml

GGUF_ARRAY, GGUF_U32 = 9, 4


def _value_at(data: bytes, key: str) -> int:
    """Where the value of metadata `key` starts: after its length-prefixed name and its 4-byte type."""
    name = key.encode()
    at = data.index(struct.pack("<Q", len(name)) + name)
    return at + 8 + len(name) + 4


def cut_inside_array(syn: Path, out: Path, key: str) -> Path:
    """The file cut 5 bytes into the elements of array `key` (after its element type and count)."""
    data = syn.read_bytes()
    out.write_bytes(data[: _value_at(data, key) + 4 + 8 + 5])
    return out


def cut_in_half(syn: Path, out: Path) -> Path:
    data = syn.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def with_first_string_length(syn: Path, out: Path, key: str, length: int) -> Path:
    """The file with the first string of array `key` claiming `length` bytes (one corrupted length field)."""
    data = syn.read_bytes()
    at = _value_at(data, key) + 4 + 8
    out.write_bytes(data[:at] + struct.pack("<Q", length) + data[at + 8:])
    return out


def with_version(syn: Path, out: Path, version: int) -> Path:
    data = syn.read_bytes()
    out.write_bytes(data[:4] + struct.pack("<I", version) + data[8:])
    return out


def with_first_key_length(syn: Path, out: Path, length: int) -> Path:
    """The file with its first metadata key claiming `length` bytes, padded to that size (the length fits the file)."""
    data = syn.read_bytes()
    at = 4 + 4 + 8 + 8  # magic, version, tensor count, key count
    patched = data[:at] + struct.pack("<Q", length) + data[at + 8:]
    with out.open("wb") as f:
        f.write(patched)
        f.truncate(max(len(patched), at + 8 + length + 64))  # sparse: no disk spent
    return out


def with_block_count(syn: Path, out: Path, value: bytes, vtype: int = GGUF_U32) -> Path:
    """The file with `qwen35.block_count` (a u32) replaced by `value` of type `vtype`."""
    data = syn.read_bytes()
    at = _value_at(data, "qwen35.block_count")
    assert struct.unpack_from("<I", data, at - 4)[0] == GGUF_U32
    out.write_bytes(data[: at - 4] + struct.pack("<I", vtype) + value + data[at + 4:])
    return out


@pytest.fixture
def broken(syn: Path, tmp_path: Path) -> dict[str, Path]:
    assert read_gguf(syn).metadata["qwen35.rope.dimension_sections"] == [2, 1, 1, 0]  # a small array
    return {
        # 267 tokens: longer than the reader keeps, so it steps over them without decoding
        "vocabulary": cut_inside_array(syn, tmp_path / "vocab.gguf", "tokenizer.ggml.tokens"),
        "small-array": cut_inside_array(syn, tmp_path / "sections.gguf", "qwen35.rope.dimension_sections"),
        # half the file: the header and tensor table whole, the tensors past the middle missing
        "tensor-data": cut_in_half(syn, tmp_path / "half.gguf"),
        "block-count-0": with_block_count(syn, tmp_path / "zero.gguf", struct.pack("<I", 0)),
        # 6 values: the header grows by 32 bytes, the alignment, so the tensor data is still where it is looked for
        "block-count-array": with_block_count(syn, tmp_path / "array.gguf",
                                              struct.pack("<IQ6I", GGUF_U32, 6, *[2] * 6), GGUF_ARRAY),
        # a vocabulary string 2^63 bytes long: the walk over the lengths passed what struct takes (OverflowError)
        "string-length": with_first_string_length(syn, tmp_path / "long.gguf", "tokenizer.ggml.tokens", 1 << 63),
        # arrays in arrays 5000 deep, 12 bytes a level: read recursively, a RecursionError
        "nested-arrays": with_block_count(syn, tmp_path / "nested.gguf", struct.pack("<IQ", GGUF_ARRAY, 1) * 5000
                                          + struct.pack("<IQ", GGUF_U32, 0), GGUF_ARRAY),
        # 2^31 layers in 100 bytes: per-layer tuples of that length took gigabytes (MemoryError, or the OOM killer)
        "block-count-huge": with_block_count(syn, tmp_path / "huge.gguf", struct.pack("<I", 1 << 31)),
        # versions llama.cpp does not read, an array of arrays, an empty array of no known type: each passed check
        # and failed every start of llama-server
        "version-1": with_version(syn, tmp_path / "v1.gguf", 1),
        "version-4": with_version(syn, tmp_path / "v4.gguf", 4),
        "array-of-arrays": with_block_count(syn, tmp_path / "aa.gguf", struct.pack("<IQIQI", GGUF_ARRAY, 1, GGUF_U32,
                                                                                   1, 2), GGUF_ARRAY),
        "unknown-array-type": with_block_count(syn, tmp_path / "unknown.gguf", struct.pack("<IQ", 99, 0), GGUF_ARRAY),
        # the first key claims 400 MB: the rest of the file was read as one key (2 GB for a copy of a 1 GB model)
        "key-length": with_first_key_length(syn, tmp_path / "key.gguf", 400_000_000),
    }


WHAT = {
    "vocabulary": "truncated GGUF: metadata `tokenizer.ggml.tokens` runs past the end of the file",
    "small-array": "truncated GGUF: metadata `qwen35.rope.dimension_sections` runs past the end of the file",
    "tensor-data": "truncated GGUF: the data of tensor `",
    "block-count-0": "GGUF key `qwen35.block_count` is 0; expected an integer of at least 1",
    "block-count-array": "GGUF key `qwen35.block_count` is an array of 6 values; expected an integer of at least 1",
    "string-length": "truncated GGUF: metadata `tokenizer.ggml.tokens` runs past the end of the file",
    "nested-arrays": "malformed GGUF: metadata `qwen35.block_count` is an array of arrays, which llama.cpp does "
                     "not read",
    "block-count-huge": "GGUF key `qwen35.block_count` is 2147483648; llama.cpp loads at most 512 layers (a corrupt "
                        "or foreign file)",
    "version-1": "GGUF version 1: llama.cpp reads versions 2 and 3",
    "version-4": "GGUF version 4: llama.cpp reads versions 2 and 3",
    "array-of-arrays": "malformed GGUF: metadata `qwen35.block_count` is an array of arrays, which llama.cpp does "
                       "not read",
    "unknown-array-type": "malformed GGUF: metadata `qwen35.block_count` is an array of unknown GGUF value type 99",
    "key-length": "malformed GGUF: metadata entry 0 is a string of 400000000 bytes",
}


@pytest.mark.parametrize("case", ["vocabulary", "small-array", "tensor-data"])
def test_a_truncated_file_is_a_gguf_error_naming_it(broken: dict[str, Path], case: str) -> None:
    with pytest.raises(GgufError) as caught:
        read_gguf(broken[case])
    assert str(caught.value).startswith(f"{broken[case]}: {WHAT[case]}")


@pytest.mark.parametrize("case", ["string-length", "nested-arrays", "version-1", "version-4", "array-of-arrays",
                                  "unknown-array-type", "key-length"])
def test_a_malformed_file_is_a_gguf_error_naming_it(broken: dict[str, Path], case: str) -> None:
    """Before, an OverflowError and a RecursionError: tracebacks from `check` and `plan`, exit 1."""
    with pytest.raises(GgufError) as caught:
        read_gguf(broken[case])
    assert str(caught.value).startswith(f"{broken[case]}: {WHAT[case]}")


@pytest.mark.parametrize("case", ["block-count-0", "block-count-array", "block-count-huge"])
def test_a_block_count_that_is_no_positive_integer_is_an_estimate_error(broken: dict[str, Path], case: str) -> None:
    with pytest.raises(EstimateError) as caught:
        model_shape(read_gguf(broken[case]))
    assert str(caught.value) == f"{broken[case].name}: {WHAT[case]}"


@pytest.mark.parametrize("command", ["check", "plan"])
@pytest.mark.parametrize("case", list(WHAT))
def test_check_and_plan_say_what_is_wrong_in_one_line(broken: dict[str, Path], tmp_path: Path, case: str,
                                                      command: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml({"m": {"path": broken[case], "ctx_size": 512}}, {"c": {"members": [{"model": "m"}]}}))
    result = run_cli(command, str(policy))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert WHAT[case] in lines[0]
    if command == "check":  # a problem line at the model's path
        assert lines[0].startswith(f"{policy}:") and "models.m.path: " in lines[0]
