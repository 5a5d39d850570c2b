"""``save_model`` and ``dsnot-prune --save``: never destroy what is there, atomic, ordinary permissions."""
import os
import stat
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))
from pruning_models import calibration, tiny_model  # noqa: E402

from dsnot_kernels.models import check_save_target, save_model  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen2")


def _umask():
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_refuses_a_non_empty_folder_and_keeps_it(model, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("notes")
    with pytest.raises(FileExistsError, match="not empty.*overwrite"):
        save_model(model, None, victim)
    assert [p.name for p in victim.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]  # no temp folder left


def test_refuses_an_existing_file_even_with_overwrite(model, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(NotADirectoryError, match="not a folder"):
            save_model(model, None, afile, overwrite=overwrite)
    assert afile.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing hidden beside it


def test_overwrite_replaces_only_our_files(model, tmp_path):
    from transformers import AutoModelForCausalLM

    target = tmp_path / "out"
    save_model(model, None, target)
    (target / "notes.txt").write_text("notes")
    (target / "model.safetensors").write_bytes(b"stale")
    with pytest.raises(FileExistsError):
        save_model(model, None, target)
    assert (target / "model.safetensors").read_bytes() == b"stale"
    save_model(model, None, target, overwrite=True)
    assert (target / "notes.txt").read_text() == "notes"
    x = calibration(nsamples=2)
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, AutoModelForCausalLM.from_pretrained(target)(input_ids=x).logits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_empty_folder_is_filled(model, tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    save_model(model, None, target)
    assert (target / "model.safetensors").exists() and (target / "config.json").exists()


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_ordinary_permissions(model, tmp_path, umask):
    old = os.umask(umask)
    try:
        target = save_model(model, None, tmp_path / "m")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask
    files = list(target.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask for f in files)


def test_check_save_target(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        check_save_target(tmp_path / "f" / "sub")
    assert check_save_target(tmp_path / "new" / "deeper") == (tmp_path / "new" / "deeper").resolve()
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert _umask() is not None
