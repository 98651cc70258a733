"""--data as a datasets save_to_disk folder or a cached dataset's name (with :split), offline.

The cache case reproduces what an earlier ``load_dataset("org/name")`` leaves on disk
(``<cache>/org___name/<config>/<version>/<hash>/`` with Arrow files and dataset_info.json): a
packaged builder writes the Arrow files, which are then placed where a hub download lands. No
network is used: the trainer reads the cache without asking the hub.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loramux.trainer.cli import _standalone
from loramux.trainer.config import build_config
from loramux.trainer.data import load_data
from loramux.trainer.errors import DataError

CHAT = [{"messages": [{"role": "user", "content": f"Code word {i}?"},
                      {"role": "assistant", "content": f"Word{i}"}]} for i in range(12)]
PC = [{"prompt": f"{i} + 1 =", "completion": f" {i + 1}"} for i in range(5)]


def _dict_folder(tmp_path: Path) -> Path:
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_list(CHAT), "test": Dataset.from_list(CHAT[:3])}
                ).save_to_disk(str(folder))
    return folder


def test_saved_dataset_folder(tmp_path: Path) -> None:
    from datasets import Dataset

    folder = tmp_path / "pc"
    Dataset.from_list(PC).save_to_disk(str(folder))
    data = load_data(folder)
    assert data.kind == "prompt_completion" and len(data.examples) == 5
    assert data.examples[0].prompt == "0 + 1 =" and data.examples[4].completion == " 5"
    assert data.examples[1].where == f"{folder} row 2"
    assert data.digest.startswith("sha256:") and len(data.digest) == 71
    assert load_data(folder).digest == data.digest  # content, not load time
    Dataset.from_list(PC[:4]).save_to_disk(str(tmp_path / "pc4"))
    assert load_data(tmp_path / "pc4").digest != data.digest


def test_saved_dataset_dict_splits(tmp_path: Path) -> None:
    folder = _dict_folder(tmp_path)
    train = load_data(folder)  # the train split by default
    assert train.kind == "chat" and len(train.examples) == 12
    assert train.examples[0].messages == CHAT[0]["messages"]
    test = load_data(f"{folder}:test")
    assert len(test.examples) == 3 and test.examples[0].where == f"{folder}:test row 1"
    with pytest.raises(DataError) as err:
        load_data(f"{folder}:validation")
    assert str(err.value) == f"{folder}: no split 'validation'; its splits: test, train"


def test_bad_rows_are_reported_by_row(tmp_path: Path) -> None:
    from datasets import Dataset

    folder = tmp_path / "bad"
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "", "completion": "c"}]
    Dataset.from_list(rows).save_to_disk(str(folder))
    with pytest.raises(DataError) as err:
        load_data(folder)
    assert f"{folder} row 2: empty prompt" in str(err.value)


def test_missing_folder_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^dataset folder .*/nope does not exist$"):
        load_data(tmp_path / "nope")
    with pytest.raises(DataError, match=r"^data file .*/nope\.jsonl does not exist$"):
        load_data(tmp_path / "nope.jsonl")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(DataError, match="not a dataset saved with datasets' save_to_disk"):
        load_data(plain)


@pytest.fixture
def dataset_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A datasets cache holding ``someorg/codeword`` (train, test) as a hub download leaves it."""
    from datasets.packaged_modules.json.json import Json

    source = tmp_path / "src"
    source.mkdir()
    files = {}
    for split, rows in (("train", CHAT), ("test", CHAT[:4])):
        files[split] = str(source / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    builder = Json(cache_dir=str(tmp_path / "build"), dataset_name="codeword", data_files=files)
    builder.download_and_prepare()
    cache = tmp_path / "hf-datasets"
    # a hub download's layout: <org>___<name>/<config>/<version>/<hash>
    shutil.copytree(builder.cache_dir, cache / "someorg___codeword" / "default" / "0.0.0" / "h1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    # Not even offline mode is needed: any connection attempt fails the test.
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError(f"network used: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return cache


def test_cached_dataset_by_name_and_split(dataset_cache: Path) -> None:
    train = load_data("someorg/codeword:train")
    assert train.kind == "chat" and len(train.examples) == 12
    assert train.examples[11].where == "someorg/codeword:train row 12"
    test = load_data("someorg/codeword:test")
    assert len(test.examples) == 4
    assert len(load_data("someorg/codeword").examples) == 12  # train by default
    with pytest.raises(DataError) as err:
        load_data("someorg/codeword:dev")
    assert str(err.value) == "someorg/codeword: no split 'dev'; its splits: test, train"
    with pytest.raises(DataError) as err:
        load_data("someorg/other:train")
    assert str(err.value).startswith("'someorg/other' is no file or folder here, nor a dataset "
                                     f"in the local datasets cache ({dataset_cache})")
    assert "\n" not in str(err.value)


def test_config_keeps_names_and_resolves_folders(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder = _dict_folder(tmp_path)
    named = build_config(None, {"base": "b", "data": "someorg/codeword:train", "out": "o"})
    assert str(named.data) == "someorg/codeword:train"
    relative = build_config(None, {"base": "b", "data": "saved:test", "out": "o"})
    assert str(relative.data) == f"{folder}:test"
    missing = build_config(None, {"base": "b", "data": "train.jsonl", "out": "o"})
    assert missing.data == tmp_path / "train.jsonl"  # a file name stays a path


def test_cli_dry_run_with_cached_name(dataset_cache: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(_standalone(), [
        "train", "--base", "some-model", "--data", "someorg/codeword:train",
        "--eval", str(tmp_path / "src" / "test.jsonl"), "--out", str(tmp_path / "o"),
        "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "data ok: 12 train / 4 eval chat examples" in result.output
    result = CliRunner().invoke(_standalone(), [
        "train", "--base", "m", "--data", "someorg/codeword:nope", "--out", "o", "--dry-run"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: someorg/codeword: no split 'nope'; its splits: "
                                     "test, train")
