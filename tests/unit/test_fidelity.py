"""Our batched forwards compute funasr's function: same weights, same audio, batch vs one by one."""

import numpy as np
import pytest
import torch

from shared.models import registry
from shared.models.tokens import parse_tags
from workers.emotion import Emotion2vec
from workers.sensevoice import SenseVoice


@pytest.fixture(scope="module")
def wavs():
    rng = np.random.default_rng(7)
    lengths = [16000 * 3, 16000 * 5 + 123, 40000, 12345]
    return [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths]


def test_sensevoice_batch_matches_funasr(models_dir, wavs):
    am = registry.load_automodel(models_dir / "SenseVoiceSmall")
    ours = SenseVoice(am, torch.device("cpu"))
    logp, lens = ours.logits(wavs, ["auto", "en", "zh", "auto"], [True, False, True, False])
    out = ours(wavs, ["auto", "en", "zh", "auto"], [True, False, True, False])
    for i, (w, lang, itn) in enumerate(zip(wavs, ["auto", "en", "zh", "auto"], [True, False, True, False])):
        # funasr's own inference, one utterance at a time, with its logits captured at the CTC head
        captured = {}
        hook = am.model.ctc.ctc_lo.register_forward_hook(lambda m, a, o: captured.__setitem__("x", o))
        ref = am.model.inference([torch.from_numpy(w)], key=["k"], tokenizer=am.kwargs["tokenizer"],
                                 frontend=am.kwargs["frontend"], device="cpu", language=lang, use_itn=itn)
        hook.remove()
        ref_logp = torch.log_softmax(captured["x"][0], dim=-1)
        n = int(lens[i])
        assert n == ref_logp.shape[0]
        rel = (logp[i, :n] - ref_logp).abs().max() / ref_logp.abs().max()
        assert rel < 1e-4
        assert torch.equal(logp[i, :n].argmax(-1), ref_logp.argmax(-1))
        assert out[i].text == parse_tags(ref[0][0]["text"])["text"]


def test_sensevoice_language_query_changes_output(models_dir, wavs):
    am = registry.load_automodel(models_dir / "SenseVoiceSmall")
    ours = SenseVoice(am, torch.device("cpu"))
    a, _ = ours.logits(wavs[:1], ["en"], [True])
    b, _ = ours.logits(wavs[:1], ["zh"], [True])
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("attention", ["dense", "flex"])
def test_emotion2vec_batch_matches_funasr(models_dir, wavs, attention):
    am = registry.load_automodel(models_dir / "emotion2vec_plus_large")
    ours = Emotion2vec(am, torch.device("cpu"), attention=attention)
    batch = ours.scores(wavs).numpy()
    for i, w in enumerate(wavs):
        ref = am.generate(input=w, extract_embedding=False, disable_pbar=True)[0]["scores"]
        assert np.abs(batch[i] - np.asarray(ref)[ours.keep]).max() < 1e-3
    results = ours(wavs)
    assert all(abs(sum(r.scores.values()) - 1) < 1e-4 and r.label in r.scores for r in results)


@pytest.mark.parametrize("attention", ["dense", "flex"])
def test_emotion2vec_padding_does_not_leak(models_dir, wavs, attention):
    """A short utterance scores the same alone and beside a long one (masks under padding)."""
    am = registry.load_automodel(models_dir / "emotion2vec_plus_large")
    ours = Emotion2vec(am, torch.device("cpu"), attention=attention)
    alone = ours.scores([wavs[3]])
    padded = ours.scores([wavs[1], wavs[3]])[1:]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_emotion2vec_flex_attention_equals_dense_bias(models_dir, wavs):
    """ALiBi and the key-padding mask computed inside FlexAttention give the frame features that
    the dense (B, H, N, N) bias gives, per layer scales included."""
    am = registry.load_automodel(models_dir / "emotion2vec_plus_large")
    assert am.model.modality_encoders["AUDIO"].alibi_scale is not None
    dense, valid = Emotion2vec(am, torch.device("cpu"), attention="dense").embeddings(wavs)
    flex, valid_f = Emotion2vec(am, torch.device("cpu"), attention="flex").embeddings(wavs)
    assert torch.equal(valid, valid_f)
    assert (flex - dense)[valid].abs().max() < 1e-4 * dense[valid].abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_2e_2(models_dir, wavs, dtype):
    sv_am = registry.load_automodel(models_dir / "SenseVoiceSmall")
    ref, lens = SenseVoice(sv_am, torch.device("cpu")).logits(wavs, ["auto"] * 4, [True] * 4)
    low, _ = SenseVoice(sv_am, torch.device("cpu"), dtype).logits(wavs, ["auto"] * 4, [True] * 4)
    for i, n in enumerate(lens.tolist()):
        assert (low[i, :n] - ref[i, :n]).abs().max() / ref[i, :n].abs().max() < 2e-2
    e_am = registry.load_automodel(models_dir / "emotion2vec_plus_large")
    ref_s = Emotion2vec(e_am, torch.device("cpu")).scores(wavs)
    low_s = Emotion2vec(e_am, torch.device("cpu"), dtype).scores(wavs)
    assert (low_s - ref_s).abs().max() < 2e-2


def test_fused_fsmn_equals_depthwise_conv(models_dir, wavs):
    from workers import sanm

    am = registry.load_automodel(models_dir / "SenseVoiceSmall")
    enc = am.model.encoder
    x = torch.randn(3, 57, 560)
    lengths = torch.tensor([57, 40, 9])
    with torch.inference_mode():
        assert torch.allclose(sanm.encode(enc, x, lengths, shifted=False), sanm.encode(enc, x, lengths, shifted=True),
                              atol=1e-5)


def test_packed_equals_padded(models_dir, wavs):
    """Segments end to end (workers.packed) give the padded batch's logits and tokens: the gaps keep
    the FSMN memory and attention within each segment, positions restart per segment."""
    am = registry.load_automodel(models_dir / "SenseVoiceSmall")
    cpu = torch.device("cpu")
    ws = wavs + [wavs[3][:500], wavs[0][:16000]]  # a very short one: fewer frames than the gap
    langs, itn = ["auto", "en", "zh", "auto", "ja", "auto"], [True, False, True, False, True, True]
    padded, lens = SenseVoice(am, cpu, packed=False).logits(ws, langs, itn)
    rows_padded = SenseVoice(am, cpu, packed=False).token_ids(ws, langs, itn)
    for attention in ("padded", "varlen"):
        model = SenseVoice(am, cpu, packed=True, attention=attention)
        packed, lens_p = model.logits(ws, langs, itn)
        assert torch.equal(lens, lens_p)
        for i, n in enumerate(lens.tolist()):
            assert (packed[i, :n] - padded[i, :n]).abs().max() < 1e-5 * padded[i, :n].abs().max(), attention
        rows_packed = model.token_ids(ws, langs, itn)
        assert all(np.array_equal(a, b) for a, b in zip(rows_padded, rows_packed)), attention


def test_varlen_sequences_tile_the_packed_sequence():
    """Varlen attention runs on sequences that tile the packed sequence: every segment is one of
    them, gaps and the bucket's tail padding are others, none is longer than `longest`."""
    from workers.packed import Layout

    lengths = np.array([300, 7, 120, 1])
    for bucketed in (False, True):
        layout = Layout.build(lengths, width=300, gap=5, device=torch.device("cpu"), varlen=True,
                              bucketed=bucketed)
        bounds = layout.seqs.numpy().astype(np.int64)
        assert bounds[0] == 0 and bounds[-1] == layout.total and np.all(np.diff(bounds) >= 0)
        pairs = set(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
        for start, n in zip(layout.starts.tolist(), lengths.tolist()):
            assert (start, start + n) in pairs
        assert np.diff(bounds).max() <= layout.longest
        real = int(layout.starts[-1] + lengths[-1])
        if bucketed:
            assert layout.total >= real and layout.total - real <= layout.total // 16
            assert layout.longest == 512 and (len(bounds) - 1) & (len(bounds) - 2) == 0  # powers of two
            assert len(bounds) - 1 >= layout.total // 40
            assert not layout.valid[real:].any()
        else:
            assert layout.total == real and layout.longest == 300


def test_graph_buckets_waste_little():
    from workers.graphs import bucket

    assert bucket(10) == 256 and bucket(256) == 256
    for n in (257, 1000, 4097, 20_000, 65_535):
        b = bucket(n)
        assert n <= b <= n * 17 / 16
    assert len({bucket(n) for n in range(16_385, 32_769)}) == 16  # 16 steps an octave


def test_layout_maps_round_trip():
    from workers.packed import Layout

    layout = Layout.build(np.array([3, 1, 4]), width=4, gap=2, device=torch.device("cpu"))
    assert layout.total == 2 + 3 + 2 + 1 + 2 + 4
    assert layout.starts.tolist() == [2, 7, 10]
    padded = torch.arange(12, dtype=torch.float32).reshape(3, 4, 1) + 1
    packed = layout.pack(padded)[:, 0]
    assert packed[layout.valid].tolist() == [1, 2, 3, 5, 9, 10, 11, 12]
    assert layout.positions[layout.valid].tolist() == [1, 2, 3, 1, 1, 2, 3, 4]
    back = layout.unpack(packed[:, None])[:, :, 0]
    for row, n in enumerate([3, 1, 4]):
        assert torch.equal(back[row, :n], padded[row, :n, 0])


def test_compiled_layers_equal_eager(models_dir, wavs):
    """Regional compilation (each layer compiled once, reused) computes the eager function, for
    several batch sizes without a compile per batch size."""
    import torch._dynamo

    torch._dynamo.reset()
    cpu = torch.device("cpu")
    sv_am = registry.load_automodel(models_dir / "SenseVoiceSmall")
    eager, comp = SenseVoice(sv_am, cpu), SenseVoice(sv_am, cpu, compile="layers")
    e_am = registry.load_automodel(models_dir / "emotion2vec_plus_large")
    e_eager, e_comp = Emotion2vec(e_am, cpu), Emotion2vec(e_am, cpu, compile="layers")
    for batch in (wavs, wavs[:2], wavs[1:]):
        langs, itn = ["auto"] * len(batch), [True] * len(batch)
        assert all(np.array_equal(a, b) for a, b in zip(eager.token_ids(batch, langs, itn),
                                                         comp.token_ids(batch, langs, itn)))
        assert (e_eager.scores(batch) - e_comp.scores(batch)).abs().max() < 1e-5
    comp.apart = True  # the FSMN memory as a compiled graph of its own, as with CUDA graphs
    langs, itn = ["auto"] * len(wavs), [True] * len(wavs)
    pairs = zip(eager.token_ids(wavs, langs, itn), comp.token_ids(wavs, langs, itn))
    assert all(np.array_equal(a, b) for a, b in pairs)


def test_emotion2vec_runs_of_similar_length_equal_one_batch(models_dir, wavs):
    """launch() with host lengths runs rows in length runs, each padded to its own longest: the
    scores are those of the whole padded batch, in the caller's order."""
    from workers.staging import pad_batch

    am = registry.load_automodel(models_dir / "emotion2vec_plus_large")
    cpu = torch.device("cpu")
    ours = Emotion2vec(am, cpu)
    ours.split_min = 0  # the test clips are short: split them anyway
    wav, lengths = pad_batch(wavs, cpu)
    split = ours.launch(wav, lengths, torch.tensor([len(w) for w in wavs])).probs
    assert torch.allclose(split, ours.scores(wavs), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_replay_the_compiled_forward(models_dir, wavs):
    """On the GPU, the packed varlen encoder replayed from CUDA graphs gives the tokens of the same
    compiled layers run directly on the same bucketed shapes, batch after batch: shapes that share
    a graph, shapes that need a new one, and a graph replayed after another."""
    dev = torch.device("cuda")
    am = registry.load_automodel(models_dir / "SenseVoiceSmall", device="cuda")
    graphed = SenseVoice(am, dev, torch.bfloat16, compile="layers", graphs=True)
    direct = SenseVoice(am, dev, torch.bfloat16, compile="layers")
    direct.apart = direct.bucketed = True
    assert direct.graphs is None and graphed.varlen and direct.varlen
    rng = np.random.default_rng(3)
    extra = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (16000 * 40, 16000 * 2 + 5, 3000)]
    batches = [wavs, wavs[:2], wavs + extra, wavs[1:], wavs]
    for batch in batches:
        langs, itn = ["auto"] * len(batch), [True] * len(batch)
        pairs = zip(direct.token_ids(batch, langs, itn), graphed.token_ids(batch, langs, itn))
        assert all(np.array_equal(a, b) for a, b in pairs)
    assert 1 < len(graphed.graphs.graphs) < len(batches)


def test_feed_forward_with_relu_in_the_epilogue_equals_funasr(monkeypatch):
    """The switchable fused form (bias and ReLU in the first GEMM) computes funasr's feed-forward."""
    from funasr.models.transformer.positionwise_feed_forward import PositionwiseFeedForward

    from workers import sanm

    torch.manual_seed(0)
    ff = PositionwiseFeedForward(16, 32, 0.0).eval()
    x = torch.randn(2, 7, 16)
    monkeypatch.setattr(sanm, "FUSED_RELU", True)
    with torch.inference_mode():
        assert torch.allclose(sanm._feed_forward(ff, x), ff(x), atol=1e-6)
