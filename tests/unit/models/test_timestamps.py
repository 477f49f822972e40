"""Token and word timings: funasr's output_timestamp=True on the same weights, computed for a whole batch."""

import numpy as np
import pytest
import torch
from funasr.models.sense_voice.utils.ctc_alignment import ctc_forced_align

from shared.models import registry
from workers.models import alignment
from workers.models.alignment import Token, viterbi
from workers.models.sensevoice import SenseVoice

CPU = torch.device("cpu")


def _case(rng, vocab, frames, targets, fix_blank):
    logp = torch.log_softmax(torch.from_numpy(rng.standard_normal((frames, vocab)) * 3).float(), -1)
    if fix_blank:  # as funasr does before aligning: the blank's log-prob is 0 where blank is the best token
        logp[logp.argmax(-1) == 0, 0] = 0
    return logp, torch.from_numpy(rng.integers(0 if targets < 0 else 1, vocab, abs(targets)))


def test_batched_viterbi_is_funasrs_alignment():
    """Every segment of one batch gets the path funasr's ctc_forced_align gives it alone: repeated
    targets (which must keep a blank between), a target equal to the blank, blank log-probs set to 0
    (ties), and segments too short for their targets (every path -inf)."""
    rng = np.random.default_rng(0)
    cases = [_case(rng, int(rng.integers(3, 8)), int(rng.integers(1, 40)),
                   int(rng.integers(1, 14)) * (-1 if k % 5 == 0 else 1), k % 3 == 0) for k in range(64)]
    refs = [ctc_forced_align(lp[None].clone(), tg[None].clone(), torch.tensor([len(lp)]),
                             torch.tensor([len(tg)]))[0].numpy() for lp, tg in cases]
    assert any(len(tg) > len(lp) for lp, tg in cases) and any(0 in tg.tolist() for _, tg in cases)
    width, nstates = max(len(lp) for lp, _ in cases), 2 * max(len(tg) for _, tg in cases) + 1
    emit = torch.full((len(cases), width, nstates), float("-inf"))
    labels = np.zeros((len(cases), nstates), dtype=np.int64)
    for i, (lp, tg) in enumerate(cases):
        labels[i, 1: 2 * len(tg): 2] = tg.numpy()
        emit[i, : len(lp)] = lp[:, torch.from_numpy(labels[i])]
    skips = np.zeros_like(labels, dtype=bool)
    skips[:, 2:] = labels[:, 2:] != labels[:, :-2]
    frames = np.array([len(lp) for lp, _ in cases])
    path = viterbi(emit, torch.from_numpy(skips), frames, np.array([2 * len(tg) - 1 for _, tg in cases]))
    for i, ref in enumerate(refs):
        assert np.array_equal(labels[i][path[i, : frames[i]]], ref), i
        assert (path[i, frames[i]:] == -1).all()


def test_words_join_pieces_as_funasr_post():
    from funasr.models.sense_voice.model import SenseVoiceSmall

    pieces = ["▁", "he", "llo", "▁wor", "ld", "▁", "你", "好", "▁it", "'", "s", "12", "ok"]
    tokens = [Token(p, k * 0.06, k * 0.06 + 0.05) for k, p in enumerate(pieces)]
    stamps, texts = SenseVoiceSmall.post(None, [[t.piece, t.start_s, t.end_s] for t in tokens])
    words = alignment.words(tokens)
    assert [w.text for w in words] == texts
    assert [[int(w.start_s * 1000), int(w.end_s * 1000)] for w in words] == stamps


@pytest.fixture(scope="module")
def automodel(models_dir):
    """Random weights whose CTC head favours the blank, so that the outputs are sparse enough for
    most segments to have fewer targets than frames (real alignments rather than -inf paths)."""
    am = registry.load_automodel(models_dir / "SenseVoiceSmall")
    with torch.no_grad():
        am.model.ctc.ctc_lo.bias[am.model.blank_id] += 1.85
    return am


def _funasr(automodel, wav, language, itn):
    """funasr's inference with output_timestamp=True, and the timed pieces its `post` receives."""
    pieces = []
    post = automodel.model.post
    automodel.model.post = lambda stamps: (pieces.extend(stamps), post(stamps))[1]
    try:
        out = automodel.model.inference([torch.from_numpy(wav)], key=["k"], tokenizer=automodel.kwargs["tokenizer"],
                                        frontend=automodel.kwargs["frontend"], device="cpu", language=language,
                                        use_itn=itn, output_timestamp=True)
    finally:
        del automodel.model.post
    return out[0][0], pieces


def test_timings_match_funasr_output_timestamp(automodel):
    """Same weights, same audio: one batch of ours (packed and padded) gives, for every segment,
    funasr's timed pieces and its words with their start/end in ms."""
    rng = np.random.default_rng(3)
    batch = [(rng.standard_normal(n) * s).astype(np.float32)
             for n, s in [(16000 * 3, 0.1), (16000 * 9, 0.3), (16000 * 5, 0.1), (40000, 1.0), (12345, 0.1),
                          (16000 * 12, 0.05)]]
    langs, itn = ["en", "en", "auto", "en", "zh", "en"], [False, True, False, False, True, False]
    refs = [_funasr(automodel, w, lang, flag) for w, lang, flag in zip(batch, langs, itn)]
    assert sum(len(pieces) > 10 for _, pieces in refs) >= 3  # real alignments, not only one -inf path
    for packed in (True, False):
        ours = SenseVoice(automodel, CPU, packed=packed, timings=True)(batch, langs, itn)
        for i, (ref, pieces) in enumerate(refs):
            if "timestamp" not in ref:  # funasr times nothing when there is no piece
                assert ours[i].words == [] and ours[i].tokens == []
                continue
            assert [(t.piece, round(t.start_s * 1000), round(t.end_s * 1000)) for t in ours[i].tokens] == \
                [(p, int(a * 1000), int(b * 1000)) for p, a, b in pieces], (packed, i)
            assert [w.text for w in ours[i].words] == ref["words"], (packed, i)
            assert [[round(w.start_s * 1000), round(w.end_s * 1000)] for w in ours[i].words] == ref["timestamp"]


def test_timings_off_by_default(automodel, wavs):
    """Without `timings`, transcripts carry no times (and the forward copies nothing more back)."""
    out = SenseVoice(automodel, CPU)(wavs[:2], ["auto"] * 2, [True] * 2)
    assert all(t.words is None and t.tokens is None for t in out)


def test_words_are_stored_in_seconds_of_the_file():
    from workers.gpu.results import file_words

    words = [alignment.Word("hello", 0.27, 0.51), alignment.Word("world", 0.57, 1.17)]
    assert file_words(words, 12.34) == [{"w": "hello", "start_s": 12.61, "end_s": 12.85},
                                        {"w": "world", "start_s": 12.91, "end_s": 13.51}]
    assert file_words([], 3.0) == [] and file_words(None, 3.0) is None


def test_groups_bound_the_padding_and_cover_the_batch():
    """Segments ordered longest first are cut into consecutive groups whose padded emissions are at most twice
    their real ones; every segment is in exactly one group, and a batch of like sizes stays one group."""
    from workers.models.alignment import groups

    rng = np.random.default_rng(5)
    frames = np.sort(rng.integers(10, 500, 300))[::-1]
    nstates = 2 * rng.integers(1, frames // 2 + 1) + 1
    cut = groups(frames, nstates)
    assert [s.start for s in cut] == [0] + [s.stop for s in cut[:-1]] and cut[-1].stop == len(frames)
    assert 1 < len(cut) < len(frames)
    for s in cut:
        padded = (s.stop - s.start) * frames[s.start] * nstates[s].max()
        assert s.stop - s.start == 1 or padded <= 2 * (frames[s] * nstates[s]).sum()
    assert groups(np.full(8, 100), np.full(8, 41)) == [slice(0, 8)]
