"""The checks of `speechq up` and `speechq selfcheck`: each failure says what is wrong and how to fix it."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from api import preflight
from shared.config import Settings
from tests.conftest import free_port


def _folder(path: Path, state=None, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"model": "SenseVoiceSmall"}))
    torch.save(state if state is not None else {"encoder.weight": torch.zeros(2, 2)}, path / "model.pt")
    for name, text in (files or {}).items():
        (path / name).write_text(text)
    return path


def _check(tmp_path, directory: Path) -> preflight.Check:
    return preflight.model_folder(Settings(data_dir=tmp_path), "SenseVoiceSmall", directory,
                                  "SPEECHQ_SENSEVOICE_MODEL_DIR")


def test_a_complete_model_folder_passes(tmp_path):
    check = _check(tmp_path, _folder(tmp_path / "sv"))
    assert check.ok and "1 tensors" in check.message and "RANDOM" not in check.message


def test_random_weights_are_said_so(tmp_path):
    from shared.models import weights

    state = weights.mark_random({"encoder.weight": torch.zeros(2)}, {"model": "x", "size": "tiny", "seed": 0})
    check = _check(tmp_path, _folder(tmp_path / "sv", state))
    assert check.ok and "RANDOM weights" in check.message


def test_a_missing_model_folder_names_it_and_the_commands_that_fix_it(tmp_path):
    check = _check(tmp_path, tmp_path / "models" / "SenseVoiceSmall")
    assert not check.ok and f"no model folder at {tmp_path / 'models' / 'SenseVoiceSmall'}" in check.message
    assert check.fix.startswith("speechq models pull --model sensevoice") and "speechq models import" in check.fix


def test_a_relative_data_folder_is_explained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPEECHQ_SENSEVOICE_MODEL_DIR", raising=False)
    settings = Settings(data_dir=Path("var"), models_dir=None)
    check = preflight.model_folder(settings, "SenseVoiceSmall", settings.sensevoice_dir, "SPEECHQ_SENSEVOICE_MODEL_DIR")
    assert not check.ok and f"relative to the current directory {tmp_path}" in check.message


def test_files_named_by_configuration_json_must_be_there(tmp_path):
    meta = {"file_path_metas": {"init_param": "model.pt", "tokenizer_conf": {"bpemodel": "x.bpe.model"},
                                "frontend_conf": {"cmvn_file": "am.mvn"}}}
    folder = _folder(tmp_path / "sv", files={"configuration.json": json.dumps(meta), "am.mvn": ""})
    check = _check(tmp_path, folder)
    assert not check.ok and check.message == f"{folder} lacks x.bpe.model"


@pytest.mark.parametrize("content", [b"not a checkpoint" * 64, b""])
def test_a_corrupt_or_truncated_checkpoint_is_refused(tmp_path, content):
    folder = _folder(tmp_path / "sv")
    if content:
        (folder / "model.pt").write_bytes(content)
    else:  # a download cut short
        data = (folder / "model.pt").read_bytes()
        (folder / "model.pt").write_bytes(data[: len(data) // 2])
    check = _check(tmp_path, folder)
    assert not check.ok and f"{folder / 'model.pt'} does not open as a checkpoint" in check.message


def test_a_config_that_does_not_parse_is_refused(tmp_path):
    folder = _folder(tmp_path / "sv")
    (folder / "config.yaml").write_text("model: [unclosed\n")
    check = _check(tmp_path, folder)
    assert not check.ok and "config.yaml does not parse" in check.message


def test_the_vendored_vad_folder_passes():
    settings = Settings()
    assert preflight.model_folder(settings, "FSMN-VAD", settings.vad_model_dir, "SPEECHQ_VAD_MODEL_DIR").ok


def test_a_port_in_use_is_refused_with_the_setting_to_change():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        check = preflight.port_free("API", "127.0.0.1", port, "SPEECHQ_API_PORT")
    assert not check.ok and check.message == f"127.0.0.1:{port} is in use by another process"
    assert check.fix.startswith("SPEECHQ_API_PORT=<a free port> speechq up")
    assert preflight.port_free("API", "127.0.0.1", port, "SPEECHQ_API_PORT").ok  # free again


def test_two_listeners_on_one_port_are_refused(tmp_path):
    port = free_port()
    settings = Settings(data_dir=tmp_path, api_port=port, flower_port=port, redis_url="redis://127.0.0.1:1/0")
    checks = preflight.ports(settings)
    assert [c.ok for c in checks] == [True, False] and "also the API port" in checks[1].message


def test_the_embedded_valkey_port_is_checked_only_without_redis_url(tmp_path):
    names = [c.name for c in preflight.ports(Settings(data_dir=tmp_path, redis_url=None), flower=False)]
    assert names == ["API port", "embedded Valkey port"]


def test_an_unwritable_data_folder_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("")
    check = preflight.data_folder(Settings(data_dir=tmp_path / "a-file" / "var"))
    assert not check.ok and "is not a writable folder" in check.message and "SPEECHQ_DATA_DIR=" in check.fix


def test_the_data_folder_is_shown_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check = preflight.data_folder(Settings(data_dir=Path("var")))
    assert check.ok and check.message == str(tmp_path / "var")


def test_missing_ffmpeg_is_refused(monkeypatch):
    monkeypatch.setattr(preflight.shutil, "which", lambda _name: None)
    for check in (preflight.ffmpeg_on_path(), preflight.ffmpeg_runs()):
        assert not check.ok and "ffmpeg is not on PATH" in check.message and "apt-get install -y ffmpeg" in check.fix


def test_ffmpeg_decodes():
    assert preflight.ffmpeg_runs().ok


def test_an_unreachable_broker_is_refused(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check = preflight.broker_reachable(Settings(data_dir=tmp_path, redis_url=f"redis://127.0.0.1:{port}/0"))
    assert not check.ok and f"127.0.0.1:{port}" in check.message and "unset REDIS_URL" in check.fix


def test_torch_and_torchaudio_that_disagree_are_named_with_the_reinstall(monkeypatch):
    def broken():
        raise OSError(".venv/lib/python3.11/site-packages/torchaudio/lib/libtorchaudio.abi3.so: undefined symbol: "
                      "_ZN3c104impl3cow11cow_deleterEPv")

    monkeypatch.setattr(preflight, "_load_torchaudio", broken)
    monkeypatch.setattr(preflight, "_version", {"torch": "2.11.0+cu130", "torchaudio": "2.11.1+cu130"}.get)
    check = preflight.torchaudio_library()
    assert not check.ok
    assert check.message.startswith("torch and torchaudio versions disagree (torch 2.11.0+cu130, torchaudio 2.11.1")
    assert "undefined symbol" in check.message and check.fix.startswith("bash deploy/install.sh")


def test_a_torchaudio_without_its_native_library_is_reported(monkeypatch):
    def missing():
        raise ImportError("torchaudio's native library (libtorchaudio) is missing from the installation")

    monkeypatch.setattr(preflight, "_load_torchaudio", missing)
    monkeypatch.setattr(preflight, "_version", lambda _pkg: "2.11.0")
    check = preflight.torchaudio_library()
    assert not check.ok and "does not load" in check.message and "disagree" not in check.message


def test_this_torchaudio_loads():
    check = preflight.torchaudio_library()
    assert check.ok, check.message


def test_selfcheck_does_not_try_the_vad_when_torchaudio_fails(monkeypatch):
    monkeypatch.setattr(preflight, "torchaudio_library", lambda: preflight.Check("torchaudio", False, "x", "fix it"))
    monkeypatch.setattr(preflight, "vad_runs", lambda _s: pytest.fail("the VAD needs torchaudio"))
    vad = preflight.selfcheck(Settings())[-1]
    assert vad.name == "FSMN-VAD" and not vad.ok and vad.fix == "fix it"


def test_a_vad_that_does_not_load_is_reported(monkeypatch, tmp_path):
    from shared.models import registry

    def fail(directory, **_kwargs):
        raise registry.ModelLoadError(f"model folder {directory} lacks model.pt")

    monkeypatch.setattr(registry, "load_automodel", fail)
    check = preflight.vad_runs(Settings(vad_model_dir=tmp_path / "vad"))
    assert not check.ok and f"{tmp_path / 'vad'} does not load or run" in check.message
    assert "lacks model.pt" in check.message


def test_the_vendored_vad_runs():
    check = preflight.vad_runs(Settings())
    assert check.ok, check.message


def test_selfcheck_command_exit_codes(monkeypatch):
    from api.cli import app

    ok = [preflight.Check("torchaudio", True, "native library loaded")]
    monkeypatch.setattr(preflight, "selfcheck", lambda _s: ok)
    result = CliRunner().invoke(app, ["selfcheck"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "native library loaded" in result.output
    bad = ok + [preflight.Check("ffmpeg", False, "ffmpeg is not on PATH", "sudo apt-get install -y ffmpeg")]
    monkeypatch.setattr(preflight, "selfcheck", lambda _s: bad)
    result = CliRunner().invoke(app, ["selfcheck"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "✗ ffmpeg: ffmpeg is not on PATH" in result.output and "fix: sudo apt-get install -y ffmpeg" in result.output
