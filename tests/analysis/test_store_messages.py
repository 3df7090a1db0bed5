"""A store folder that lost its root zarr.json: the message names the path and says what to do."""
from __future__ import annotations

import re

import pytest
import zarr

from repgeom.analysis.__main__ import main
from repgeom.store import StoreError, n_layers, read_layer


@pytest.fixture
def rootless_store(tmp_path):
    path = tmp_path / "activations.zarr"
    zarr.open_group(str(path), mode="w").create_group("m/c")
    (path / "zarr.json").unlink()
    return path


def test_store_without_root_zarr_json(rootless_store):
    for read in (lambda: n_layers(rootless_store, "m/c"), lambda: read_layer(rootless_store, "m/c", 0)):
        with pytest.raises(StoreError) as caught:
            read()
        message = str(caught.value)
        assert message.startswith(f"{str(rootless_store)!r} is not a zarr store: its root zarr.json is missing "
                                  "(it holds m)")
        assert "delete the folder so that the extraction recreates it" in message
        assert "give the path of the right store (--store)" in message
        assert "GroupNotFoundError" not in message


def test_the_suggested_root_makes_the_store_readable_again(rootless_store):
    message = ""
    try:
        n_layers(rootless_store, "m/c")
    except StoreError as err:
        message = str(err)
    root = re.search(r"restore '(.*?)' as (\{.*\}\})", message)
    assert root and root.group(1) == str(rootless_store / "zarr.json")
    (rootless_store / "zarr.json").write_text(root.group(2))
    with pytest.raises(StoreError, match="is not a repgeom activation group"):  # readable, just not ours
        n_layers(rootless_store, "m/c")


def test_empty_folder_and_file_as_store(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(StoreError, match=r"'.*empty.zarr' is not a zarr store: its root zarr.json is missing "
                                         r"\(it is empty\)"):
        n_layers(tmp_path / "empty.zarr", "m/c")
    (tmp_path / "file.zarr").write_text("")
    with pytest.raises(StoreError, match=r"'.*file.zarr' is a file, not a folder"):
        n_layers(tmp_path / "file.zarr", "m/c")


def test_analysis_cli_reports_it_in_one_line(rootless_store, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    assert main(["layers", "--store", str(rootless_store), "--group", "m/c", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{str(rootless_store)!r} is not a zarr store: its root zarr.json is missing" in err
    assert "Traceback" not in err and not out.exists()
