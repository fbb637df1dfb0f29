"""Safetensors loading: valid checkpoints load exactly, broken ones fail with a named ValueError/OSError."""

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from fastx.checkpoints.safetensors import checkpoint_files, load_state_dict, read_safetensors_header


def _tensors():
    return {"a.weight": torch.randn(3, 5), "b.bias": torch.arange(7, dtype=torch.int64), "c": torch.randn(2).bfloat16()}


def _write_raw(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_single_file_round_trip_and_dtype_conversion(tmp_path):
    tensors = _tensors()
    save_file(tensors, tmp_path / "model.safetensors")
    state = load_state_dict(tmp_path)
    assert state.keys() == tensors.keys()
    for k in tensors:
        torch.testing.assert_close(state[k], tensors[k], rtol=0, atol=0)
    half = load_state_dict(tmp_path, dtype=torch.float16)
    assert half["a.weight"].dtype == torch.float16 and half["b.bias"].dtype == torch.int64


def test_sharded_index(tmp_path):
    save_file({"x": torch.ones(2)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"y": torch.zeros(3)}, tmp_path / "model-00002-of-00002.safetensors")
    index = {"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert len(checkpoint_files(tmp_path)) == 2
    assert set(load_state_dict(tmp_path)) == {"x", "y"}


def test_index_pointing_outside_the_folder_is_refused(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../evil.safetensors"}}))
    with pytest.raises(OSError, match="shard '../evil.safetensors' is not a file"):
        checkpoint_files(tmp_path)


def test_pickle_only_checkpoint_is_refused_with_conversion_hint(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(OSError, match="pytorch_model.bin: pickle files, which fastx never loads.*save_pretrained"):
        checkpoint_files(tmp_path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda h, d: (h, d[:-4]), "outside the data section"),
        (lambda h, d: ({**h, "a": {**h["a"], "dtype": "F8_E9"}}, d), "unknown dtype 'F8_E9'"),
        (lambda h, d: ({**h, "a": {**h["a"], "shape": [3, -1]}}, d), "shape must be a list of non-negative"),
        (lambda h, d: ({**h, "a": {**h["a"], "shape": [4, 4]}}, d), "64 expected|expected 64"),
        (lambda h, d: ({**h, "b": {**h["b"], "data_offsets": [8, 16]}}, d), "overlap"),
        (lambda h, d: ({**h, "a": {"dtype": "F32"}}, d), "expected keys dtype, shape, data_offsets"),
        (lambda h, d: ({**h, "__metadata__": [1]}, d), "__metadata__ must be an object"),
    ],
)
def test_broken_headers_name_the_file_and_tensor(tmp_path, mutate, message):
    header = {
        "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},
    }
    h, d = mutate(header, bytes(24))
    _write_raw(tmp_path / "model.safetensors", h, d)
    with pytest.raises(ValueError, match=message) as info:
        load_state_dict(tmp_path)
    assert "model.safetensors" in str(info.value)


def test_truncated_and_oversized_header(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="truncated safetensors file"):
        read_safetensors_header(path)
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(ValueError, match="header length 1000000000 runs past the end"):
        read_safetensors_header(path)
    with pytest.raises(OSError, match="cannot read"):
        read_safetensors_header(tmp_path / "missing.safetensors")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_headers_fail_cleanly_or_load(tmp_path, data):
    """hypothesis flips bytes of a valid header: only a ValueError (or a correct load) may come out."""
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), path)
    blob = bytearray(path.read_bytes())
    header_len = int.from_bytes(blob[:8], "little")
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, 8 + header_len - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    path.write_bytes(bytes(blob))
    try:
        state = load_state_dict(tmp_path)
    except ValueError as exc:
        assert "model.safetensors" in str(exc)
    else:
        assert all(isinstance(t, torch.Tensor) for t in state.values())
