import pytest
import torch

from shared.models import random_init, registry, weights


def test_tiny_models_load_and_verify(models_dir):
    for name in ("SenseVoiceSmall", "emotion2vec_plus_large"):
        model = registry.load_automodel(models_dir / name)
        assert model.model is not None
        assert registry.provenance(registry.SENSEVOICE, models_dir / name).random_weights


def test_vendored_vad_is_real():
    from shared.config import Settings

    p = registry.provenance(registry.VAD, Settings().vad_model_dir)
    assert not p.random_weights and len(p.sha256) == 64
    assert (Settings().vad_model_dir / "FunASR_MODEL_LICENSE.txt").exists()


def test_missing_tensor_fails_loudly(tmp_path):
    """funasr prints a warning and keeps the random init; we refuse."""
    target = tmp_path / "sv"
    random_init.write_sensevoice(target, "tiny")
    state = torch.load(target / "model.pt")
    key = next(k for k in state if k.startswith("encoder."))
    state["renamed." + key] = state.pop(key)
    torch.save(state, target / "model.pt")
    with pytest.raises(registry.ModelLoadError, match="missing in checkpoint"):
        registry.load_automodel(target)


def test_values_are_compared(models_dir):
    model = registry.load_automodel(models_dir / "SenseVoiceSmall").model
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(registry.ModelLoadError, match="differ"):
        registry.verify_weights(model, models_dir / "SenseVoiceSmall" / "model.pt")


def test_wrong_shape_fails_loudly(tmp_path):
    target = tmp_path / "e2v"
    random_init.write_emotion2vec(target, "tiny")
    state = torch.load(target / "model.pt")
    state["d2v_model.proj.weight"] = torch.zeros(3, 64)
    torch.save(state, target / "model.pt")
    with pytest.raises(registry.ModelLoadError, match="shape"):
        registry.load_automodel(target)


def test_missing_folder_explains(tmp_path):
    with pytest.raises(registry.ModelLoadError, match="models pull"):
        registry.load_automodel(tmp_path / "nothing")


def test_real_weights_are_not_replaced_without_force(tmp_path):
    target = tmp_path / "sv"
    random_init.write_sensevoice(target, "tiny")
    torch.save(weights.strip_marker(torch.load(target / "model.pt")), target / "model.pt")
    (target / random_init.RANDOM_MARKER).unlink()  # now it looks like a released folder
    with pytest.raises(random_init.RealWeightsPresent):
        random_init.write_sensevoice(target, "tiny")
    random_init.write_sensevoice(target, "tiny", force=True)


def test_full_size_layout_counts():
    from funasr.models.emotion2vec.model import Emotion2vec
    from funasr.models.sense_voice.model import SenseVoiceSmall

    from shared.models import layouts

    with torch.device("meta"):
        cfg = layouts.sensevoice_config("full")
        sv = SenseVoiceSmall(input_size=560, vocab_size=25055, encoder=cfg["encoder"],
                             encoder_conf=cfg["encoder_conf"], **cfg["model_conf"])
        e2v = Emotion2vec(model_conf=layouts.emotion2vec_config("full")["model_conf"], vocab_size=9)
    n_sv = sum(p.numel() for p in sv.parameters())
    assert 233.5e6 < n_sv < 234.5e6
    assert len(sv.encoder.encoders0) + len(sv.encoder.encoders) + len(sv.encoder.tp_encoders) == 70
    assert len(e2v.blocks) == 16 and len(e2v.modality_encoders["AUDIO"].context_encoder.blocks) == 8
