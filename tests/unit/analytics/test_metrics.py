"""Conversation and call metrics on segment rows whose truth is known (times placed by hand)."""

import math

import pytest

from shared.analytics.conversation import Utterance, overlaps, turns, union
from shared.analytics.metrics import Thresholds, call_metrics, flat, slope_per_minute

LABELS = {0: "agent", 1: "customer"}


def u(ch, start, end, text="", **kw):
    return Utterance(channel=ch, label=LABELS[ch], start_ms=start, end_ms=end, text=text, **kw)


def scores(happy=0.0, angry=0.0, neutral=0.0):
    rest = max(0.0, 1.0 - happy - angry - neutral)
    return {"happy": happy, "angry": angry, "neutral": neutral + rest}


# agent 1-5 s, customer barges in at 4 s (1 s overlap), agent answers 9-12 s after a 3 s silence,
# customer backchannel 10-10.2 s (0.2 s: an overlap, too short to be an interruption), agent again 20-22 s.
CALL = [
    u(0, 1000, 5000, "thank you for calling how can I help", emotion="NEUTRAL", emotion2vec_scores=scores(neutral=1),
      language="en", loudness_lufs=-20.0),
    u(1, 4000, 6000, "my internet is down", emotion="ANGRY", emotion2vec_scores=scores(angry=0.8), language="en",
      loudness_lufs=-30.0),
    u(0, 9000, 12000, "let me check that for you", emotion="HAPPY", emotion2vec_scores=scores(happy=0.6),
      language="en", loudness_lufs=-20.0),
    u(1, 10000, 10200, "ok", emotion="NEUTRAL", emotion2vec_scores=scores(neutral=1), language="en"),
    u(0, 20000, 22000, "done", emotion="HAPPY", emotion2vec_scores=scores(happy=1.0), language="de",
      loudness_lufs=-20.0),
]


def test_turns_and_overlaps():
    t = turns(CALL)
    assert [(x.channel, x.start_ms, x.end_ms) for x in t] == [
        (0, 1000, 5000), (1, 4000, 6000), (0, 9000, 12000), (1, 10000, 10200), (0, 20000, 22000)]
    o = overlaps(CALL)
    assert [(x.start_ms, x.end_ms, x.by, x.over) for x in o] == [(4000, 5000, 1, 0), (10000, 10200, 1, 0)]
    assert t[0].overlaps == [o[0]] and t[1].overlaps == [o[0]]
    assert union(CALL) == [(1000, 6000), (9000, 12000), (20000, 22000)]


def test_same_start_has_no_interrupter():
    o = overlaps([u(0, 0, 2000), u(1, 0, 1000)])
    assert [(x.start_ms, x.end_ms, x.by, x.over) for x in o] == [(0, 1000, None, None)]


def test_file_metrics():
    mt = call_metrics(CALL, 30.0, LABELS, Thresholds(silence_s=3.0, interruption_s=0.3))
    assert mt["talk_s"] == pytest.approx(5 + 3 + 2)
    assert mt["non_talk_s"] == pytest.approx(20.0)
    # gaps between speech: 6->9 (3 s) and 12->20 (8 s); both reach the 3 s threshold
    assert mt["silences"] == 2 and mt["silence_s"] == pytest.approx(11.0)
    assert mt["longest_silence_s"] == pytest.approx(8.0)
    assert mt["overlaps"] == 2 and mt["overlap_s"] == pytest.approx(1.2)
    assert mt["interruptions"] == 1 and mt["interruption_s"] == pytest.approx(1.0)
    assert mt["turns"] == 5


def test_channel_metrics():
    mt = call_metrics(CALL, 30.0, LABELS, Thresholds(silence_s=3.0, interruption_s=0.3))
    agent, customer = mt["channels"]
    assert agent["talk_s"] == pytest.approx(9.0) and customer["talk_s"] == pytest.approx(2.2)
    assert agent["talk_share"] + customer["talk_share"] == pytest.approx(1.0)
    assert agent["talk_share"] == pytest.approx(9.0 / 11.2, abs=1e-4)
    assert customer["interruptions_made"] == 1 and customer["interruptions_made_s"] == pytest.approx(1.0)
    assert agent["interrupted"] == 1 and agent["interruptions_made"] == 0
    # agent: 8 + 6 + 1 words in 9 s of talk
    assert agent["words"] == 15 and agent["words_per_minute"] == pytest.approx(15 / 9 * 60, abs=0.1)
    assert agent["words_source"] == "text"
    assert agent["language"] == "en" and agent["languages_s"] == {"de": 2.0, "en": 7.0}
    assert agent["loudness_lufs"] == pytest.approx(-20.0)
    assert customer["loudness_lufs"] == pytest.approx(-30.0)  # the backchannel has no LUFS: not counted
    assert customer["emotion"] == "ANGRY" and customer["emotion2vec_label"] == "angry"
    # agent's valence rises: 0 at 3 s, 0.6 at 10.5 s, 1.0 at 21 s
    assert agent["valence_trend_per_min"] > 0
    assert agent["valence_trend_per_min"] == pytest.approx(
        slope_per_minute([(3.0, 0.0), (10.5, 0.6), (21.0, 1.0)]), abs=1e-4)
    assert agent["sensevoice_valence_trend_per_min"] > 0
    assert customer["valence_mean"] < 0


def test_threshold_moves_silences_and_interruptions():
    mt = call_metrics(CALL, 30.0, LABELS, Thresholds(silence_s=5.0, interruption_s=0.1))
    assert mt["silences"] == 1 and mt["longest_silence_s"] == pytest.approx(8.0)
    assert mt["interruptions"] == 2


def test_word_timings_count_and_cjk():
    mt = call_metrics([u(0, 0, 6000, "你好世界", words=None), u(1, 0, 3000, "hello there", words=5)],
                      6.0, LABELS)
    agent, customer = mt["channels"]
    assert agent["words"] == 4 and agent["words_per_minute"] == pytest.approx(40.0)
    assert customer["words"] == 5 and customer["words_source"] == "word_timings"


def test_silent_channel_and_empty_file():
    mt = call_metrics([u(0, 0, 1000, "hi")], 5.0, LABELS)
    assert mt["channels"][1]["talk_s"] == 0 and mt["channels"][1]["words_per_minute"] is None
    empty = call_metrics([], 5.0, LABELS)
    assert empty["non_talk_s"] == 5.0 and empty["longest_silence_s"] is None


def test_slope():
    assert slope_per_minute([(0, 0.0), (60, 1.0), (120, 2.0)]) == pytest.approx(1.0)
    assert slope_per_minute([(5, 1.0)]) is None


def test_flat_for_exports():
    f = flat(call_metrics(CALL, 30.0, LABELS))
    assert f["talk_s"] == pytest.approx(10.0)
    assert f["channel.customer.interruptions_made"] == 1
    assert f["channel.agent.languages_s.de"] == 2.0
    assert all(not isinstance(v, (dict, list)) for v in f.values())
    assert not any(isinstance(v, float) and math.isnan(v) for v in f.values())
