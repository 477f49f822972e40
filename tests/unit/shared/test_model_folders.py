"""Model folders keep their provenance: failed pulls and bad imports leave them untouched, and
"random" is decided from the weights themselves (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from shared.models import install, random_init, registry, weights


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_released_like(folder: Path) -> Path:
    """Same layout as a released folder, with no speechq marker inside model.pt or beside it."""
    state = torch.load(folder / "model.pt")
    torch.save(weights.strip_marker(state), folder / "model.pt")
    (folder / weights.RANDOM_MARKER).unlink(missing_ok=True)
    return folder


def released_sensevoice(folder: Path, seed: int = 3) -> Path:
    random_init.write_sensevoice(folder, "tiny", seed=seed)
    return make_released_like(folder)


def hub_down(partial: bool):
    """A stand-in for modelscope.snapshot_download with the hub unreachable (after writing half a folder)."""

    def snapshot_download(model_id, revision=None, local_dir=None, **kwargs):
        if partial:
            Path(local_dir, "config.yaml").write_text("model: SenseVoiceSmall\n")
            Path(local_dir, "model.pt").write_bytes(b"PK\x03\x04 half a checkpoint")
        raise ConnectionError("Failed to resolve 'modelscope.cn' ([Errno -2] Name or service not known)")

    return snapshot_download


# --- the random decision ---------------------------------------------------------------------------------

def test_random_is_read_from_the_weights(tmp_path):
    target = tmp_path / "SenseVoiceSmall"
    random_init.write_sensevoice(target, "tiny")
    (target / weights.RANDOM_MARKER).unlink()
    p = registry.provenance(registry.SENSEVOICE, target)
    assert p.random_weights and p.revision == "random"
    assert weights.inspect(target / "model.pt").marker["size"] == "tiny"
    make_released_like(target)  # model.pt rewritten: the cached answer must not survive
    p = registry.provenance(registry.SENSEVOICE, target)
    assert not p.random_weights and p.revision is None
    assert p.sha256 == weights.sha256_file(target / "model.pt")


def test_embedded_marker_does_not_disturb_loading(tmp_path, caplog):
    target = tmp_path / "e2v"
    random_init.write_emotion2vec(target, "tiny")
    with caplog.at_level("WARNING", logger="shared.models.registry"):
        registry.load_automodel(target)
    assert "not part of the model" not in caplog.text


def test_folders_of_earlier_versions_stay_random(tmp_path):
    target = tmp_path / "sv"
    random_init.write_sensevoice(target, "tiny")
    state = torch.load(target / "model.pt")
    torch.save(weights.strip_marker(state), target / "model.pt")  # as written before the marker existed
    assert registry.provenance(registry.SENSEVOICE, target).random_weights  # the json still says so
    (target / weights.RANDOM_MARKER).unlink()
    assert not registry.provenance(registry.SENSEVOICE, target).random_weights


def test_init_random_decides_from_the_weights(tmp_path):
    target = tmp_path / "sv"
    random_init.write_sensevoice(target, "tiny")
    (target / weights.RANDOM_MARKER).unlink()
    random_init.write_sensevoice(target, "tiny", seed=1)  # still speechq's own weights: no --force needed
    make_released_like(target)
    before = snapshot(target)
    with pytest.raises(random_init.RealWeightsPresent):
        random_init.write_sensevoice(target, "tiny")
    assert snapshot(target) == before


# --- pull --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("partial", [False, True], ids=["nothing", "partial"])
def test_failed_pull_leaves_the_folder_untouched(tmp_path, monkeypatch, partial):
    import modelscope

    target = tmp_path / "SenseVoiceSmall"
    random_init.write_sensevoice(target, "tiny")
    before = snapshot(target)
    monkeypatch.setattr(modelscope, "snapshot_download", hub_down(partial))
    with pytest.raises(install.ModelFetchError, match="could not download iic/SenseVoiceSmall.*unchanged"):
        install.pull(registry.SENSEVOICE, target)
    assert snapshot(target) == before
    assert registry.provenance(registry.SENSEVOICE, target).random_weights
    assert [p.name for p in tmp_path.iterdir()] == ["SenseVoiceSmall"]  # no staging folder left behind


def test_incomplete_download_is_refused(tmp_path, monkeypatch):
    import modelscope

    target = tmp_path / "SenseVoiceSmall"
    random_init.write_sensevoice(target, "tiny")
    before = snapshot(target)

    def snapshot_download(model_id, revision=None, local_dir=None, **kwargs):
        Path(local_dir, "config.yaml").write_text("model: SenseVoiceSmall\n")
        return local_dir

    monkeypatch.setattr(modelscope, "snapshot_download", snapshot_download)
    with pytest.raises(registry.ModelLoadError, match="lacks am.mvn.*model.pt"):
        install.pull(registry.SENSEVOICE, target)
    assert snapshot(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["SenseVoiceSmall"]


def test_verified_download_is_swapped_in(tmp_path, monkeypatch):
    import shutil

    import modelscope

    hub = released_sensevoice(tmp_path / "hub")
    target = tmp_path / "models" / "SenseVoiceSmall"
    random_init.write_sensevoice(target, "tiny")

    def snapshot_download(model_id, revision=None, local_dir=None, **kwargs):
        shutil.copytree(hub, local_dir, dirs_exist_ok=True)
        return local_dir

    monkeypatch.setattr(modelscope, "snapshot_download", snapshot_download)
    install.pull(registry.SENSEVOICE, target)
    assert snapshot(target) == snapshot(hub)
    assert not registry.provenance(registry.SENSEVOICE, target).random_weights
    assert [p.name for p in target.parent.iterdir()] == ["SenseVoiceSmall"]


# --- import ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_import_swaps_in_a_good_folder(tmp_path, monkeypatch, exchange):
    from shared.models import folders

    if not exchange:
        monkeypatch.setattr(folders, "_exchange", lambda a, b: False)
    source = released_sensevoice(tmp_path / "from-usb")
    target = tmp_path / "models" / "SenseVoiceSmall"
    random_init.write_sensevoice(target, "tiny")
    assert install.detect_spec(source) == registry.SENSEVOICE
    assert install.import_folder(source, target) == registry.SENSEVOICE
    assert snapshot(target) == snapshot(source)
    p = registry.provenance(registry.SENSEVOICE, target)
    assert not p.random_weights and p.sha256 == weights.sha256_file(source / "model.pt")
    assert [p.name for p in target.parent.iterdir()] == ["SenseVoiceSmall"]


def _wrong_shape(folder: Path) -> None:
    state = torch.load(folder / "model.pt")
    key = next(k for k in state if k.endswith(".weight") and state[k].dim() == 2)
    state[key] = torch.zeros(3, 3)
    torch.save(state, folder / "model.pt")


def _missing_tensor(folder: Path) -> None:
    state = torch.load(folder / "model.pt")
    del state[next(k for k in state if k.startswith("encoder."))]
    torch.save(state, folder / "model.pt")


def _truncated(folder: Path) -> None:
    data = (folder / "model.pt").read_bytes()
    (folder / "model.pt").write_bytes(data[: len(data) // 2])


def _no_cmvn(folder: Path) -> None:
    (folder / "am.mvn").unlink()


@pytest.mark.parametrize("damage, message", [(_wrong_shape, "shape of"), (_missing_tensor, "missing in checkpoint"),
                                             (_truncated, "refused"), (_no_cmvn, "lacks am.mvn")],
                         ids=["shape", "missing", "truncated", "incomplete"])
def test_bad_import_is_refused(tmp_path, damage, message):
    source = released_sensevoice(tmp_path / "from-usb")
    damage(source)
    target = tmp_path / "models" / "SenseVoiceSmall"
    random_init.write_sensevoice(target, "tiny")
    before = snapshot(target)
    with pytest.raises(registry.ModelLoadError, match=message):
        install.import_folder(source, target, registry.SENSEVOICE)
    assert snapshot(target) == before
    assert [p.name for p in target.parent.iterdir()] == ["SenseVoiceSmall"]


def test_import_of_another_model_is_refused(tmp_path):
    source = tmp_path / "e2v"
    random_init.write_emotion2vec(source, "tiny")
    with pytest.raises(registry.ModelLoadError, match="holds iic/emotion2vec_plus_large"):
        install.import_folder(source, tmp_path / "SenseVoiceSmall", registry.SENSEVOICE)
    assert not (tmp_path / "SenseVoiceSmall").exists()


def test_random_import_never_replaces_real_weights_unasked(tmp_path):
    source = tmp_path / "random"
    random_init.write_sensevoice(source, "tiny")
    (source / weights.RANDOM_MARKER).unlink()  # the weights still say it
    target = released_sensevoice(tmp_path / "SenseVoiceSmall")
    before = snapshot(target)
    with pytest.raises(random_init.RealWeightsPresent):
        install.import_folder(source, target)
    assert snapshot(target) == before
    install.import_folder(source, target, force=True)
    assert registry.provenance(registry.SENSEVOICE, target).random_weights


def test_swap_keeps_a_symlinked_folder_linked(tmp_path):
    real = tmp_path / "disk" / "SenseVoiceSmall"
    random_init.write_sensevoice(real, "tiny")
    link = tmp_path / "SenseVoiceSmall"
    link.symlink_to(real, target_is_directory=True)
    install.import_folder(released_sensevoice(tmp_path / "from-usb"), link)
    assert link.is_symlink() and not registry.provenance(registry.SENSEVOICE, link).random_weights


# --- the CLI -----------------------------------------------------------------------------------------------

@pytest.fixture
def cli(tmp_path, monkeypatch):
    from shared.config import get_settings

    dirs = {"sensevoice": tmp_path / "models" / "SenseVoiceSmall",
            "emotion2vec": tmp_path / "models" / "emotion2vec_plus_large"}
    monkeypatch.setenv("SPEECHQ_SENSEVOICE_MODEL_DIR", str(dirs["sensevoice"]))
    monkeypatch.setenv("SPEECHQ_EMOTION2VEC_MODEL_DIR", str(dirs["emotion2vec"]))
    get_settings.cache_clear()
    random_init.write_sensevoice(dirs["sensevoice"], "tiny")
    random_init.write_emotion2vec(dirs["emotion2vec"], "tiny")
    yield dirs
    get_settings.cache_clear()


def speechq(*args: str):
    from api.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_pull_offline_is_one_line_and_exit_1(cli, monkeypatch):
    import modelscope

    before = {k: snapshot(v) for k, v in cli.items()}
    monkeypatch.setattr(modelscope, "snapshot_download", hub_down(partial=True))
    result = speechq("models", "pull")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    error = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error) == 1 and error[0].startswith("error: could not download iic/SenseVoiceSmall")
    assert {k: snapshot(v) for k, v in cli.items()} == before
    check = speechq("models", "check")
    assert check.exit_code == 0 and check.output.count("RANDOM") == 2


def test_cli_import_and_check(cli, tmp_path):
    good = released_sensevoice(tmp_path / "good")
    bad = released_sensevoice(tmp_path / "bad", seed=4)
    _wrong_shape(bad)
    result = speechq("models", "import", str(bad))
    assert result.exit_code == 1 and "error: refused" in result.stderr and "unchanged" in result.stderr
    assert registry.provenance(registry.SENSEVOICE, cli["sensevoice"]).random_weights
    result = speechq("models", "import", str(good), "--model", "sensevoice")
    assert result.exit_code == 0, result.output
    assert "released weights" in result.output
    check = speechq("models", "check")
    assert check.exit_code == 0 and check.output.count("RANDOM") == 1 and check.output.count("released") == 2
    (cli["emotion2vec"] / "model.pt").unlink()
    assert speechq("models", "check").exit_code == 1


def test_cli_init_random_refuses_real_weights(cli):
    make_released_like(cli["sensevoice"])
    result = speechq("models", "init-random")
    assert result.exit_code == 1 and "--force" in result.stderr
    assert not registry.provenance(registry.SENSEVOICE, cli["sensevoice"]).random_weights
    assert speechq("models", "init-random", "--force").exit_code == 0
    assert registry.provenance(registry.SENSEVOICE, cli["sensevoice"]).random_weights
