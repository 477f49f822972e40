"""The SAN-M encoder as speechq runs it equals funasr's modules."""

import torch

from shared.models import registry
from workers.models import sanm


def test_fused_fsmn_equals_depthwise_conv(models_dir):
    am = registry.load_automodel(models_dir / "SenseVoiceSmall")
    enc = am.model.encoder
    x = torch.randn(3, 57, 560)
    lengths = torch.tensor([57, 40, 9])
    with torch.inference_mode():
        assert torch.allclose(sanm.encode(enc, x, lengths, shifted=False), sanm.encode(enc, x, lengths, shifted=True),
                              atol=1e-5)


def test_encoder_equals_funasr(models_dir):
    am = registry.load_automodel(models_dir / "SenseVoiceSmall")
    enc = am.model.encoder
    x = torch.randn(2, 33, 560)
    lengths = torch.tensor([33, 20])
    with torch.inference_mode():
        ref, _ = enc(x.clone(), lengths)  # funasr scales its input in place
        ours = sanm.encode(enc, x, lengths)
    for i, n in enumerate(lengths.tolist()):
        assert torch.allclose(ours[i, :n], ref[i, :n], atol=1e-4)


def test_gap_is_the_fsmn_reach(models_dir):
    am = registry.load_automodel(models_dir / "SenseVoiceSmall")
    pads = [p for b in am.model.encoder.encoders for p in b.self_attn.pad_fn.padding]
    assert sanm.gap(am.model.encoder) == max(pads) > 0
