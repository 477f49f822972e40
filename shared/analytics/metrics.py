"""Call metrics of one file, per file and per channel, from its utterances (definitions: docs/METRICS.md).

`call_metrics` returns a JSON-ready nested dict (stored as is); `flat` turns it into one flat dict for
exports (`channel.<label>.<metric>` keys).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

from shared.analytics.conversation import Turn, Utterance, overlaps, turns, union

VERSION = 1

# Valence of each class: pleasant +1, unpleasant -1, the rest 0. emotion2vec+'s is the expectation over its
# 9 probabilities; SenseVoice's is its tag's value.
EMOTION2VEC_VALENCE = {"happy": 1.0, "angry": -1.0, "disgusted": -1.0, "fearful": -1.0, "sad": -1.0}
SENSEVOICE_VALENCE = {"HAPPY": 1.0, "NEUTRAL": 0.0, "SURPRISED": 0.0, "ANGRY": -1.0, "DISGUSTED": -1.0,
                      "FEARFUL": -1.0, "SAD": -1.0}  # EMO_UNKNOWN and missing tags have no valence
EMOTION2VEC_NAMES = {"<unk>": "unknown"}

# A word: a run of letters/digits (apostrophes inside), or one CJK ideograph / kana character.
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+(?:'[^\W_{_CJK}]+)*")


@dataclass(frozen=True)
class Thresholds:
    silence_s: float = 3.0  # a gap in everyone's speech at least this long is a silence
    interruption_s: float = 0.3  # an overlap at least this long, begun by the later speaker, is an interruption


def words(u: Utterance) -> int:
    return u.words if u.words is not None else len(WORD.findall(u.text or ""))


def emotion2vec_valence(scores: dict[str, float] | None) -> float | None:
    if not scores:
        return None
    return sum(EMOTION2VEC_VALENCE.get(EMOTION2VEC_NAMES.get(k, k), 0.0) * p for k, p in scores.items())


def _weighted_mean(pairs) -> float | None:
    pairs = [(v, w) for v, w in pairs if v is not None and w > 0]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _dominant(seconds: dict[str, float]) -> str | None:
    """The key with the most seconds (ties: the first in alphabetical order)."""
    return min(seconds, key=lambda k: (-seconds[k], k)) if seconds else None


def _energy_mean(pairs) -> float | None:
    """Mean loudness by energy (LUFS are logarithmic), weighted by seconds."""
    pairs = [(v, w) for v, w in pairs if v is not None and math.isfinite(v) and w > 0]
    total = sum(w for _, w in pairs)
    if not total:
        return None
    return 10 * math.log10(sum(w * 10 ** (v / 10) for v, w in pairs) / total)


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of value over time (seconds in, change per minute out); None under two distinct
    times."""
    points = [(t, v) for t, v in points if v is not None]
    if len({t for t, _ in points}) < 2:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return 60.0 * sum((t - mt) * (v - mv) for t, v in points) / var


def turn_emotion(t: Turn) -> dict:
    """Both models' emotion for one turn, weighted by the seconds of its segments."""
    sv: dict[str, float] = {}
    sv_valence = sv_weight = 0.0
    e2v: dict[str, float] = {}
    e2v_seconds = 0.0
    for u in t.utterances:
        sec = u.seconds
        if u.emotion:
            sv[u.emotion] = sv.get(u.emotion, 0.0) + sec
            v = SENSEVOICE_VALENCE.get(u.emotion)
            if v is not None and sec > 0:
                sv_valence += v * sec
                sv_weight += sec
        if u.emotion2vec_scores:
            for k, p in u.emotion2vec_scores.items():
                k = EMOTION2VEC_NAMES.get(k, k)
                e2v[k] = e2v.get(k, 0.0) + p * sec
            e2v_seconds += sec
    mean_scores = {k: v / e2v_seconds for k, v in e2v.items()} if e2v_seconds else None
    return {
        "emotion": _dominant(sv),
        "emotion2vec_label": _dominant(mean_scores) if mean_scores else None,
        "valence": emotion2vec_valence(mean_scores),
        "sensevoice_valence": sv_valence / sv_weight if sv_weight else None,
    }


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def call_metrics(utterances: list[Utterance], duration_s: float, labels: dict[int, str],
                 thresholds: Thresholds = Thresholds()) -> dict:
    """Metrics of one file. `labels`: every channel of the file (index -> label), speech or not."""
    spans = union(utterances)
    talk_union = sum(e - s for s, e in spans) / 1000.0
    gaps = [(e0, s1) for (_, e0), (s1, _) in zip(spans, spans[1:])]
    silences = [(s1 - e0) / 1000.0 for e0, s1 in gaps if (s1 - e0) / 1000.0 >= thresholds.silence_s]
    ovs = overlaps(utterances)
    interruptions = [o for o in ovs if o.by is not None and o.seconds >= thresholds.interruption_s]
    all_turns = turns(utterances)
    emotions = [(t, turn_emotion(t)) for t in all_turns]
    talk_total = sum(u.seconds for u in utterances)

    channels = []
    for index in sorted(labels):
        mine = [u for u in utterances if u.channel == index]
        talk = sum(u.seconds for u in mine)
        n_words = sum(words(u) for u in mine)
        langs: dict[str, float] = defaultdict(float)
        sv: dict[str, float] = defaultdict(float)
        for u in mine:
            if u.language:
                langs[u.language] += u.seconds
            if u.emotion:
                sv[u.emotion] += u.seconds
        my_turns = [(t, e) for t, e in emotions if t.channel == index]
        e2v_labels: dict[str, float] = defaultdict(float)
        for t, e in my_turns:
            if e["emotion2vec_label"]:
                e2v_labels[e["emotion2vec_label"]] += t.talk_seconds
        made = [o for o in interruptions if o.by == index]
        suffered = [o for o in interruptions if o.over == index]
        mid = [((t.start_ms + t.end_ms) / 2000.0, t.talk_seconds, e) for t, e in my_turns]
        channels.append({
            "index": index, "label": labels[index],
            "talk_s": _r(talk), "talk_share": _r(talk / talk_total if talk_total else None, 4),
            "segments": len(mine), "turns": len(my_turns),
            "words": n_words,
            "words_source": "word_timings" if mine and all(u.words is not None for u in mine) else "text",
            "words_per_minute": _r(n_words / (talk / 60.0) if talk else None, 1),
            "interruptions_made": len(made), "interruptions_made_s": _r(sum(o.seconds for o in made)),
            "interrupted": len(suffered), "interrupted_s": _r(sum(o.seconds for o in suffered)),
            "loudness_lufs": _r(_energy_mean((u.loudness_lufs, u.seconds) for u in mine), 2),
            "language": _dominant(langs), "languages_s": {k: _r(v) for k, v in sorted(langs.items())},
            "emotion": _dominant(sv), "emotion2vec_label": _dominant(e2v_labels),
            "valence_mean": _r(_weighted_mean((e["valence"], w) for _, w, e in mid), 4),
            "valence_trend_per_min": _r(slope_per_minute([(m, e["valence"]) for m, _, e in mid]), 4),
            "sensevoice_valence_mean": _r(_weighted_mean((e["sensevoice_valence"], w) for _, w, e in mid), 4),
            "sensevoice_valence_trend_per_min": _r(
                slope_per_minute([(m, e["sensevoice_valence"]) for m, _, e in mid]), 4),
        })
    return {
        "version": VERSION,
        "duration_s": _r(duration_s), "talk_s": _r(talk_union), "non_talk_s": _r(max(0.0, duration_s - talk_union)),
        "overlap_s": _r(sum(o.seconds for o in ovs)), "overlaps": len(ovs),
        "silence_threshold_s": thresholds.silence_s, "silences": len(silences), "silence_s": _r(sum(silences)),
        "longest_silence_s": _r(max(silences)) if silences else None,
        "interruption_threshold_s": thresholds.interruption_s,
        "interruptions": len(interruptions), "interruption_s": _r(sum(o.seconds for o in interruptions)),
        "turns": len(all_turns),
        "valence_trend_per_min": _r(slope_per_minute(
            [((t.start_ms + t.end_ms) / 2000.0, e["valence"]) for t, e in emotions]), 4),
        "channels": channels,
    }


def flat(metrics: dict | None) -> dict:
    """One level of keys for exports: the file's own metrics, then `channel.<label>.<name>` per channel
    (dicts such as languages_s become `...languages_s.<lang>`)."""
    if not metrics:
        return {}
    out = {k: v for k, v in metrics.items() if k != "channels"}
    for ch in metrics.get("channels", []):
        prefix = f"channel.{ch['label']}."
        for k, v in ch.items():
            if k in ("index", "label"):
                continue
            if isinstance(v, dict):
                out.update({f"{prefix}{k}.{sub}": x for sub, x in v.items()})
            else:
                out[prefix + k] = v
    return out
