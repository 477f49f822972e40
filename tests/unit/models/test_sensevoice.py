"""The batched SenseVoice forward computes funasr's function: same weights, same audio, batch vs one by one."""

import numpy as np
import pytest
import torch

from shared.models import registry
from shared.models.tokens import parse_tags
from workers.models.sensevoice import SenseVoice

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def automodel(models_dir):
    return registry.load_automodel(models_dir / "SenseVoiceSmall")


def test_batch_matches_funasr(automodel, wavs):
    ours = SenseVoice(automodel, CPU)
    langs, itn = ["auto", "en", "zh", "auto"], [True, False, True, False]
    logp, lens = ours.logits(wavs, langs, itn)
    out = ours(wavs, langs, itn)
    for i, (w, lang, flag) in enumerate(zip(wavs, langs, itn)):
        # funasr's own inference, one utterance at a time, with its logits captured at the CTC head
        captured = {}
        hook = automodel.model.ctc.ctc_lo.register_forward_hook(lambda m, a, o: captured.__setitem__("x", o))
        ref = automodel.model.inference([torch.from_numpy(w)], key=["k"], tokenizer=automodel.kwargs["tokenizer"],
                                        frontend=automodel.kwargs["frontend"], device="cpu", language=lang,
                                        use_itn=flag)
        hook.remove()
        ref_logp = torch.log_softmax(captured["x"][0], dim=-1)
        n = int(lens[i])
        assert n == ref_logp.shape[0]
        assert (logp[i, :n] - ref_logp).abs().max() / ref_logp.abs().max() < 1e-4
        assert torch.equal(logp[i, :n].argmax(-1), ref_logp.argmax(-1))
        assert out[i].text == parse_tags(ref[0][0]["text"])["text"]


def test_language_query_changes_output(automodel, wavs):
    ours = SenseVoice(automodel, CPU)
    a, _ = ours.logits(wavs[:1], ["en"], [True])
    b, _ = ours.logits(wavs[:1], ["zh"], [True])
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_2e_2(automodel, wavs, dtype):
    ref, lens = SenseVoice(automodel, CPU).logits(wavs, ["auto"] * 4, [True] * 4)
    low, _ = SenseVoice(automodel, CPU, dtype).logits(wavs, ["auto"] * 4, [True] * 4)
    for i, n in enumerate(lens.tolist()):
        assert (low[i, :n] - ref[i, :n]).abs().max() / ref[i, :n].abs().max() < 2e-2


def test_packed_equals_padded(automodel, wavs):
    """Segments end to end (workers.models.layout) give the padded batch's logits and tokens: the
    gaps keep the FSMN memory and attention within each segment, positions restart per segment."""
    ws = wavs + [wavs[3][:500], wavs[0][:16000]]  # a very short one: fewer frames than the gap
    langs, itn = ["auto", "en", "zh", "auto", "ja", "auto"], [True, False, True, False, True, True]
    padded, lens = SenseVoice(automodel, CPU, packed=False).logits(ws, langs, itn)
    rows_padded = SenseVoice(automodel, CPU, packed=False).token_ids(ws, langs, itn)
    for attention in ("padded", "varlen"):
        model = SenseVoice(automodel, CPU, packed=True, attention=attention)
        packed, lens_p = model.logits(ws, langs, itn)
        assert torch.equal(lens, lens_p)
        for i, n in enumerate(lens.tolist()):
            assert (packed[i, :n] - padded[i, :n]).abs().max() < 1e-5 * padded[i, :n].abs().max(), attention
        rows_packed = model.token_ids(ws, langs, itn)
        assert all(np.array_equal(a, b) for a, b in zip(rows_padded, rows_packed)), attention


def test_unknown_attention_is_refused(automodel):
    with pytest.raises(ValueError, match="unknown attention"):
        SenseVoice(automodel, CPU, attention="flash")
