"""Push refuses a tensor whose dtype no loramux server loads (F8_E4M3, F4, ...), in any of the
adapter's safetensors files and whatever its name: a server's load-time checks cannot read such
a tensor, so a version holding one would fail every request that names it. The refusal is one
400 that names the file, the tensor and the dtype, locally and over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import COMBOS, Backend
from raw_safetensors import add_raw_tensor

from loramux.registry.errors import InvalidAdapter
from loramux.registry.validate import LOADABLE_DTYPES

FOLDER_SQLITE = [c for c in COMBOS if c.blobs == "folder" and c.index == "sqlite"]


@pytest.mark.parametrize("backend", FOLDER_SQLITE, ids=lambda c: c.id, indirect=True)
@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2", "F4"])
def test_an_extra_tensor_of_an_unloadable_dtype_is_refused_at_push(
        backend: Backend, make_adapter, dtype: str) -> None:
    folder = make_adapter()
    add_raw_tensor(folder / "adapter_model.safetensors", "extra.scale", dtype, [4, 4])
    with pytest.raises(InvalidAdapter) as refused:
        backend.registry.push(folder, "fp8")
    assert refused.value.status == 400
    message = str(refused.value)
    assert "adapter_model.safetensors" in message and "'extra.scale'" in message
    assert f"dtype {dtype}" in message, message
    assert backend.store.list(name="fp8") == []  # nothing stored


def test_a_second_safetensors_file_is_checked_too(make_adapter, tmp_path: Path) -> None:
    from loramux.registry.store import LocalRegistry

    folder = make_adapter()
    other = folder / "extra" / "more.safetensors"
    other.parent.mkdir()
    other.write_bytes((folder / "adapter_model.safetensors").read_bytes())
    add_raw_tensor(other, "packed", "F4", [2, 8])
    with LocalRegistry(tmp_path / "store") as store, pytest.raises(InvalidAdapter,
                                                                   match="dtype F4"):
        store.push(folder, "x")


def test_the_dtypes_a_server_loads_still_push(make_adapter, tmp_path: Path) -> None:
    from loramux.registry.store import LocalRegistry

    assert {"F16", "BF16", "F32"} <= LOADABLE_DTYPES
    assert not {"F8_E4M3", "F8_E5M2", "F4", "U32"} & LOADABLE_DTYPES
    folder = make_adapter()
    add_raw_tensor(folder / "adapter_model.safetensors", "step", "I64", [1])
    with LocalRegistry(tmp_path / "store") as store:
        assert store.push(folder, "x").version == 1
