"""The GPU options: built from the settings once; invalid combinations refused with the setting to change."""

import pytest
import torch

from shared.config import Settings
from workers.runtime.options import InvalidOptions, Options

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_defaults_are_valid_on_cuda():
    options = Options.from_settings(Settings(), CUDA)
    assert (options.dtype, options.compile, options.cuda_graphs, options.packed) == ("bf16", "layers", True, True)
    assert options.torch_dtype is torch.bfloat16


def test_the_cpu_runs_fp32_eager_without_graphs():
    options = Options.from_settings(Settings(), CPU)
    assert (options.dtype, options.compile, options.cuda_graphs) == ("fp32", "off", False)


def test_batch_budget_comes_from_the_packer_settings(monkeypatch):
    monkeypatch.setenv("SPEECHQ_BATCH_SECONDS", "600")
    assert Options.from_settings(Settings(), CUDA).batch_seconds == 600


@pytest.mark.parametrize("settings, needle", [
    ({"SPEECHQ_COMPILE": "model"}, "SPEECHQ_GPU_PACKED=false"),
    ({"SPEECHQ_GPU_PACKED": "false"}, "needs SPEECHQ_GPU_PACKED=true"),
    ({"SPEECHQ_DTYPE": "fp32"}, "SPEECHQ_DTYPE=bf16 or fp16"),
    ({"SPEECHQ_BATCH_SECONDS": "10"}, "SPEECHQ_MAX_SEGMENT_SECONDS"),
])
def test_invalid_combinations_are_refused(monkeypatch, settings, needle):
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidOptions, match=needle):
        Options.from_settings(Settings(), CUDA)


def test_graphs_need_cuda():
    with pytest.raises(InvalidOptions, match="CUDA device"):
        Options(cuda_graphs=True).validated(CPU)


def test_the_old_boolean_compile_setting_is_refused(monkeypatch):
    import pydantic

    monkeypatch.setenv("SPEECHQ_COMPILE", "true")
    with pytest.raises(pydantic.ValidationError):
        Settings()
