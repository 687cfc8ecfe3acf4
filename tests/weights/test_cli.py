"""``preannotate weights list | pull | import`` on a local storage folder."""

from __future__ import annotations

import hashlib

import pytest

from preannotate.cli.main import main
from preannotate.errors import UnsafeName
from preannotate.keys import check_name
from preannotate.settings import ServiceSettings, SettingsError, load
from preannotate.storage import LocalStorage
from preannotate.weights import WeightsStore

SSD = "ssd-mobilenet-v2-coco"


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("PREANNOTATE_STORAGE", "local")
    monkeypatch.setenv("PREANNOTATE_STORAGE_ROOT", str(tmp_path / "storage"))
    monkeypatch.setenv("COLUMNS", "400")
    return LocalStorage(tmp_path / "storage")


def _row(out: str, model_type: str) -> str:
    return next(line for line in out.splitlines() if f" {model_type} " in line)


def test_list_pull_and_list_again(env, mirror, checkpoints, monkeypatch, capsys):
    mirror.serve_checkpoint(checkpoints.mobilenet)
    monkeypatch.setenv("PREANNOTATE_WEIGHTS_MIRROR", mirror.url)
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "missing" in _row(out, SSD)
    assert f"{mirror.url}/ckpt-180648.index" in _row(out, SSD)

    assert main(["weights", "pull", SSD]) == 0
    sha = checkpoints.mobilenet_sha256
    assert f"{SSD}: installed {sha[:12]}" in capsys.readouterr().out
    assert WeightsStore(env).installed(SSD).sha256 == sha

    assert main(["weights", "list"]) == 0
    row = _row(capsys.readouterr().out, SSD)
    assert sha[:12] in row and "imagenet" in row and "backbone" in row


def test_pull_refused_exits_1_and_names_the_import(env, mirror, monkeypatch, capsys):
    monkeypatch.setenv("PREANNOTATE_WEIGHTS_MIRROR", mirror.url)  # serves nothing
    assert main(["weights", "pull", SSD, "maskrcnn"]) == 1
    out = capsys.readouterr().out
    assert f"preannotate weights import {SSD} FILE" in " ".join(out.split())
    assert "preannotate weights import maskrcnn FILE" in " ".join(out.split())
    assert env.list("weights/") == []


def test_pull_of_an_unknown_model_type_exits_2(env, capsys):
    assert main(["weights", "pull", "nope"]) == 2
    assert "no pretrained weights are known for model type 'nope'" in capsys.readouterr().out


def test_import(env, checkpoints, tmp_path, capsys):
    archive = tmp_path / "resnet-101-i224.tar.gz"
    archive.write_bytes(checkpoints.archive)
    assert main(["weights", "import", "frcnn-res101-coco", str(archive)]) == 0
    sha = hashlib.sha256(checkpoints.archive).hexdigest()
    assert f"installed {sha[:12]}" in capsys.readouterr().out
    assert WeightsStore(env).installed("frcnn-res101-coco").url == "import:resnet-101-i224.tar.gz"
    assert main(["weights", "import", SSD, str(tmp_path / "absent.index")]) == 1
    assert "is not a file" in capsys.readouterr().out


def test_settings_are_validated():
    with pytest.raises(SettingsError, match="PREANNOTATE_WEIGHTS_MIRROR"):
        load(ServiceSettings, weights_mirror="ftp://mirror")
    with pytest.raises(SettingsError, match="unknown model type 'nope'"):
        load(ServiceSettings, weights_urls={"nope": "http://x/y"})
    with pytest.raises(SettingsError, match="not an http"):
        load(ServiceSettings, weights_urls={SSD: "file:///x"})
    assert load(ServiceSettings, weights_mirror="http://m/base/").weights_mirror == "http://m/base"


def test_namespace_weights_is_reserved():
    with pytest.raises(UnsafeName, match="reserved"):
        check_name("weights", "namespace")
    assert check_name("weights", "model name") == "weights"
