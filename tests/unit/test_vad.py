import numpy as np
import soundfile as sf

from shared.config import Settings
from shared.vad import segments, segments_stream, split_long
from tests.conftest import shared_audio

PUBLISHED = [(70, 2340), (2620, 6200), (6480, 23670), (23950, 26250), (26780, 28990), (29950, 31430),
             (31750, 37600), (38210, 46900), (47310, 49630), (49910, 56460), (56740, 59540), (59820, 70450)]


def test_vad_example_equals_published_segments():
    audio, rate = sf.read(shared_audio("vad_example.wav"), dtype="float32")
    assert rate == 16000
    assert segments(audio, Settings().vad_model_dir, max_segment_ms=60000) == PUBLISHED


def test_silence_has_no_segments():
    assert segments(np.zeros(16000 * 2, dtype=np.float32), Settings().vad_model_dir, 30000) == []


def test_split_long():
    assert split_long([(0, 1000)], 400) == [(0, 333), (333, 667), (667, 1000)]
    assert split_long([(5, 100)], 400) == [(5, 100)]
    pieces = split_long([(6480, 23670)], 5000)
    assert all(e - s <= 5000 for s, e in pieces) and pieces[0][0] == 6480 and pieces[-1][1] == 23670


def test_streamed_vad_equals_offline_across_chunk_boundaries():
    audio, _ = sf.read(shared_audio("vad_example.wav"), dtype="float32")
    long = np.tile(audio, 3)  # 211 s: crosses the VAD's 60 s chunks three times
    blocks = (long[i:i + 7777] for i in range(0, long.size, 7777))
    directory = Settings().vad_model_dir
    assert segments_stream(blocks, directory, 600000) == segments(long, directory, 600000)


def test_phone_call_equals_funasr_automodel():
    from shared.models.registry import load_automodel
    from shared.vad import MAX_END_SILENCE_MS

    audio, _ = sf.read(shared_audio("phone_conversation.wav"), dtype="float32")
    directory = Settings().vad_model_dir
    ref = load_automodel(directory).generate(input=audio, max_end_silence_time=MAX_END_SILENCE_MS)[0]["value"]
    got = segments_stream((audio[i:i + 16000] for i in range(0, audio.size, 16000)), directory, 10**9)
    assert got == [tuple(s) for s in ref] and got
