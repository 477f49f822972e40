import numpy as np
import pytest
import soundfile as sf
import torch

from shared.config import Settings
from workers.ingest.vad import (MAX_END_SILENCE_MS, Detector, cpu_has_bf16, decisions, detector, resolve_precision, segments,
                        segments_many, segments_stream, split_long)
from workers.ingest.vad.scorer import StreamState
from tests.conftest import shared_audio

PUBLISHED = [(70, 2340), (2620, 6200), (6480, 23670), (23950, 26250), (26780, 28990), (29950, 31430),
             (31750, 37600), (38210, 46900), (47310, 49630), (49910, 56460), (56740, 59540), (59820, 70450)]
DIRECTORY = Settings().vad_model_dir


@pytest.fixture(scope="module")
def automodel():
    from shared.models.registry import load_automodel

    return load_automodel(DIRECTORY)


def funasr_segments(automodel, audio: np.ndarray) -> list[tuple[int, int]]:
    result = automodel.generate(input=audio, max_end_silence_time=MAX_END_SILENCE_MS, disable_pbar=True)
    return [tuple(s) for s in result[0]["value"]]


EXACT = ["fp32", "mixed"]  # the precisions that must give funasr's segments


@pytest.mark.parametrize("precision", EXACT)
def test_vad_example_equals_published_segments(precision):
    audio, rate = sf.read(shared_audio("vad_example.wav"), dtype="float32")
    assert rate == 16000
    assert segments(audio, DIRECTORY, max_segment_ms=60000, precision=precision) == PUBLISHED


@pytest.mark.parametrize("precision", EXACT)
def test_phone_call_equals_funasr_automodel(automodel, precision):
    audio, _ = sf.read(shared_audio("phone_conversation.wav"), dtype="float32")
    got = segments_stream((audio[i:i + 16000] for i in range(0, audio.size, 16000)), DIRECTORY, 10**9, precision)
    assert got == funasr_segments(automodel, audio) and got


@pytest.mark.parametrize("precision", EXACT)
def test_long_recording_and_batched_channels_equal_funasr_automodel(automodel, precision):
    """211 s crosses funasr's 60 s chunks; continuous speech (pauses cut out) runs into the 60 s
    segment limit; both go through one batched pass together with a silent channel."""
    audio, _ = sf.read(shared_audio("vad_example.wav"), dtype="float32")
    long = np.tile(audio, 3)
    speech = np.concatenate([audio[s * 16:e * 16] for s, e in PUBLISHED] * 2)  # ~130 s, no long pauses
    silent = np.zeros(16000 * 5, dtype=np.float32)
    blocks = lambda x, n: (x[i:i + n] for i in range(0, x.size, n))  # noqa: E731
    got = segments_many([blocks(long, 7777), blocks(speech, 160001), [silent]], DIRECTORY, 10**9, precision)
    ref_speech = funasr_segments(automodel, speech)
    assert any(e - s >= 59000 for s, e in ref_speech)  # the limit is exercised
    assert got == [funasr_segments(automodel, long), ref_speech, []]


def test_network_scores_equal_funasr_encoder(automodel):
    """Our frontend + FSMN forward give funasr's per-frame silence posterior (what its state machine reads)."""
    audio, _ = sf.read(shared_audio("vad_example.wav"), dtype="float32")
    model = automodel.model
    seen = []
    original = model.ComputeScores

    def record(feats, cache=None):
        original(feats, cache=cache)
        seen.append(cache["stats"].scores[0, -feats.shape[1]:, 0].clone())

    model.ComputeScores = record
    try:
        funasr_segments(automodel, audio)
    finally:
        del model.ComputeScores
    ref = torch.cat(seen).numpy()
    det = detector(DIRECTORY, "fp32")
    from workers.ingest.vad.scorer import StreamState

    state = StreamState()
    feats = [det.scorer.features(state, audio[:500000], False), det.scorer.features(state, audio[500000:], True)]
    ours = np.concatenate([det.scorer.silence([state], [f])[0] for f in feats])
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def _funasr_machine(automodel, silence_prob: np.ndarray) -> list[tuple[int, int]]:
    """funasr's own state machine fed with given per-frame silence posteriors (network bypassed)."""
    model = automodel.model
    n = silence_prob.size
    scores = torch.full((1, n, 248), 1e-6)
    scores[0, :, 0] = torch.from_numpy(silence_prob)

    class Fixed(torch.nn.Module):
        def forward(self, feats, cache=None):
            return scores

    encoder = model.encoder
    model.encoder = Fixed()
    try:
        cache = {}
        model.init_cache(cache, max_end_silence_time=MAX_END_SILENCE_MS)
        out = model.forward(feats=torch.zeros(1, n, 400), waveform=torch.zeros(1, (n - 1) * 160 + 400), cache=cache,
                            is_final=True, is_streaming_input=False)
    finally:
        model.encoder = encoder
    return [tuple(s) for s in (out[0] if out else [])]


@pytest.mark.parametrize("seed", range(8))
def test_vectorised_state_machine_equals_funasr_loop(automodel, seed):
    """Random speech/silence runs (short blips, pauses around the end-silence limit, speech past the
    60 s segment limit, values at the 0.2 threshold): same segments as funasr's per-frame loop."""
    rng = np.random.default_rng(seed)
    runs, speaking = [], bool(seed % 2)
    while sum(len(r) for r in runs) < 12000:
        if speaking:
            length = int(rng.choice([rng.integers(1, 30), rng.integers(30, 900), rng.integers(6000, 6500)],
                                    p=[0.3, 0.65, 0.05]))
            values = rng.uniform(0.0, 0.19, length)
        else:
            length = int(rng.choice([rng.integers(1, 20), rng.integers(55, 75), rng.integers(75, 400)]))
            values = rng.uniform(0.21, 1.0, length)
        flips = rng.random(length) < 0.08  # isolated wrong frames inside runs
        values[flips] = 1.0 - values[flips]
        edge = rng.random(length) < 0.01
        values[edge] = np.float32(0.2)
        runs.append(values)
        speaking = not speaking
    prob = np.concatenate(runs).astype(np.float32)
    rules = decisions.Rules.from_options(automodel.model.vad_opts, MAX_END_SILENCE_MS)
    assert decisions.segments(decisions.speech_frames(prob, rules), rules) == _funasr_machine(automodel, prob)


def test_bf16_moves_boundaries_by_one_frame_at_most():
    audio, _ = sf.read(shared_audio("vad_example.wav"), dtype="float32")
    got = segments(audio, DIRECTORY, 10**9, precision="bf16")
    assert len(got) == len(PUBLISHED)
    assert all(abs(a - c) <= 10 and abs(b - d) <= 10 for (a, b), (c, d) in zip(got, PUBLISHED))


def _posteriors(det, audio: np.ndarray, block: int) -> np.ndarray:
    state, out = StreamState(), []
    for i in range(0, audio.size, block):
        chunk = audio[i:i + block]
        out.append(det.scorer.silence([state], [det.scorer.features(state, chunk, i + block >= audio.size)])[0])
    return np.concatenate(out)


@pytest.mark.parametrize(("name", "block"), [("vad_example.wav", 1600), ("vad_example.wav", 16000 * 7),
                                           ("phone_conversation.wav", 16000 * 7)])
def test_mixed_precision_recomputes_frames_near_the_threshold_exactly(name, block):
    """Frames whose bf16 posterior is near the pivot get fp32's value, though only `reach` earlier
    frames are recomputed (1,600-sample blocks are 10 frames, fewer than the reach: the carried
    context spans several steps). bf16's own error stays well inside the margin."""
    audio, _ = sf.read(shared_audio(name), dtype="float32")
    exact = _posteriors(Detector(DIRECTORY, "fp32"), audio, block)
    fast = _posteriors(Detector(DIRECTORY, "bf16"), audio, block)
    det = Detector(DIRECTORY, "mixed")
    mixed = _posteriors(det, audio, block)
    near = np.abs(fast - det.rules.pivot) < det.scorer.margin
    assert 0 < near.sum() == det.scorer.rechecked and det.scorer.frames == exact.size
    np.testing.assert_allclose(mixed[near], exact[near], atol=1e-5)
    if block >= 16000:  # the fp32 pass multiplies many rows at once there, and so does the recheck: same bits
        np.testing.assert_array_equal(mixed[near], exact[near])
    np.testing.assert_array_equal(mixed[~near], fast[~near])
    assert np.abs(fast - exact).max() < det.scorer.margin / 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("streams", "frames"), [(8, 6000), (1, 1), (3, 77)])
def test_memory_block_sums_as_the_depthwise_conv1d(dtype, streams, frames):
    """The channels-last convolution gives the conv1d-over-transposed-copies bits: fp32 everywhere, bf16 on CPUs with
    native bf16 (AVX-512 BF16 or AMX), where `auto` runs the checked-bf16 pass. Without it (AVX2 only) oneDNN's two
    bf16 paths round their partial sums in another order, a few of 6 million sums differ in the last bits, and
    `auto` runs the fp32 pass there: only closeness is asked."""
    from workers.ingest.vad.scorer import _memory_block

    g = torch.Generator().manual_seed(streams * frames)
    y = torch.randn(streams, 19 + frames, 128, generator=g).to(dtype)
    taps = torch.randn(128, 1, 20, generator=g).to(dtype)
    ref = torch.nn.functional.conv1d(y.transpose(1, 2), taps, groups=128).transpose(1, 2)
    got = _memory_block(y, taps)
    assert got.is_contiguous()
    if dtype == torch.float32 or cpu_has_bf16():
        assert torch.equal(got, ref)
    else:
        torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("seed", range(3))
def test_recheck_computes_each_layer_only_where_flagged_frames_need_it(seed):
    """The recheck's pruned forward gives the whole-stream fp32 pass's bits at the flagged frames:
    lone frames, runs, frames closer to the stream's start than the reach, several streams."""
    scorer = Detector(DIRECTORY, "fp32").scorer
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(n, 400, generator=g) * 2 for n in (300, 90, 40, 12)]
    whole = [scorer.exact.forward(s[None], [scorer.exact.zero_memory(scorer.lorder - 1)], [s.shape[0]])[0]
             for s in seqs]
    flagged = [torch.tensor(p) for p in ([3, 100, 101, 102, 180, 260, 299], [0, 89], [20], [11])]
    got = scorer.exact.at(list(zip(seqs, flagged)))
    for pos, ref, value in zip(flagged, whole, got):
        assert torch.equal(value, ref[pos])
    # a frame a whole reach into a block, with only the reach before it kept, still gets the stream's value
    late = torch.tensor([250])
    tail = seqs[0][250 - scorer.reach:]
    assert torch.equal(scorer.exact.at([(tail, late - (250 - scorer.reach))])[0], whole[0][late])


@pytest.mark.parametrize("rows", [1, 150, 10**9])
def test_recheck_in_groups_of_sequences_gives_the_same_bits(rows, monkeypatch):
    """The recheck runs a few sequences at a time (as many as fit about TILE_ROWS first-layer frames; one
    alone where it is wider): the posteriors equal those of all sequences in one packed pass."""
    from workers.ingest.vad import scorer as module

    exact = Detector(DIRECTORY, "fp32").scorer.exact
    g = torch.Generator().manual_seed(11)
    seqs = [torch.randn(n, 400, generator=g) * 2 for n in (300, 90, 40, 12, 200)]
    flagged = [torch.tensor(p) for p in ([3, 100, 101, 250], [0, 89], [20], [11], [150, 199])]
    whole = exact._at(list(zip(seqs, flagged)))
    monkeypatch.setattr(module, "TILE_ROWS", rows)
    for value, ref in zip(exact.at(list(zip(seqs, flagged))), whole, strict=True):
        assert torch.equal(value, ref)


@pytest.mark.parametrize("seconds", [0.5, 7])
def test_segments_do_not_depend_on_the_block_size(seconds):
    audio, _ = sf.read(shared_audio("vad_example.wav"), dtype="float32")
    det = Detector(DIRECTORY, "mixed", block_samples=int(16000 * seconds))
    assert det.run([[audio]]) == [PUBLISHED]


def test_precision_setting():
    assert resolve_precision("auto") == ("mixed" if cpu_has_bf16() else "fp32")
    assert resolve_precision("fp32") == "fp32"
    with pytest.raises(ValueError, match="unknown VAD precision"):
        resolve_precision("int4")


def test_silence_and_short_input_have_no_segments():
    assert segments(np.zeros(16000 * 2, dtype=np.float32), DIRECTORY, 30000) == []
    assert segments(np.zeros(100, dtype=np.float32), DIRECTORY, 30000) == []
    assert segments(np.zeros(0, dtype=np.float32), DIRECTORY, 30000) == []


def test_split_long():
    assert split_long([(0, 1000)], 400) == [(0, 333), (333, 667), (667, 1000)]
    assert split_long([(5, 100)], 400) == [(5, 100)]
    pieces = split_long([(6480, 23670)], 5000)
    assert all(e - s <= 5000 for s, e in pieces) and pieces[0][0] == 6480 and pieces[-1][1] == 23670


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_cpu_forward_in_spans_gives_the_whole_blocks_bits(automodel, dtype, monkeypatch):
    """The CPU forward runs a block in spans of frames (all layers per span, memories carried): posteriors and
    the memories left behind equal one pass over the whole block, bit for bit, with ragged rows (a row that
    ends inside a span, one that ends on a span's edge, one with no new frames) and a last span that takes the
    remainder."""
    from workers.ingest.vad import scorer as module

    encoder = automodel.model.encoder
    weights = module._Weights(encoder, dtype)
    pad = encoder.fsmn[0].fsmn_block.lorder - 1
    g = torch.Generator().manual_seed(5)
    lengths = [1000, 999, 700, 37, 0, 512, 256]
    x = (torch.randn(len(lengths), 1000, 400, generator=g) * 2).to(dtype)

    def run(rows):
        monkeypatch.setattr(module, "TILE_ROWS", rows)
        memories = [weights.zero_memory(pad) for _ in lengths]
        return weights.forward(x, memories, lengths), memories

    whole, kept = run(10**9)
    spans, left = run(len(lengths) * 64)  # 64-frame spans; the last one 64 + 40 frames
    for row, n in enumerate(lengths):
        assert torch.equal(spans[row, :n], whole[row, :n])
        assert all(torch.equal(a, b) for a, b in zip(left[row], kept[row]))


def test_joined_runs_of_frames_index_as_one_sequence():
    from workers.ingest.vad.scorer import Joined

    past, block = torch.arange(12.0).reshape(3, 4), torch.arange(100.0, 120.0).reshape(5, 4)
    joined = Joined(past, block)
    mask = torch.tensor([True, False, True, False, False, True, True, False])
    assert joined.shape == (8, 4)
    assert torch.equal(joined[mask], torch.cat((past, block))[mask])
    assert torch.equal(Joined(past[:0], block)[mask[3:]], block[mask[3:]])


def test_frame_level_cmvn_gives_the_stacked_features_bits():
    """FSMN-VAD's am.mvn repeats one frame's statistics across the LFR vector, so the scorer normalises each
    fbank frame once before stacking; the stacked features must equal, to the bit, normalising the stacked
    400-dim vectors as funasr does (the general path), whatever the block boundaries."""
    fast = Detector(DIRECTORY, "fp32").scorer
    general = Detector(DIRECTORY, "fp32").scorer
    assert fast.frame_cmvn is not None  # the shipped model takes the per-frame path
    general.frame_cmvn = None
    audio = np.random.default_rng(3).standard_normal(16000 * 7).astype(np.float32) * 0.1
    cuts = [0, 399, 16000, 16161, 50000, 111999, audio.size]
    a, b = StreamState(), StreamState()
    for start, end in zip(cuts, cuts[1:]):
        final = end == audio.size
        fa = fast.features(a, audio[start:end], final)
        fb = general.features(b, audio[start:end], final)
        assert fa.shape == fb.shape
        assert torch.equal(fa, fb)
