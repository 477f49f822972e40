"""A file's conversation: every channel's segments merged in time order into turns, with overlaps marked.

A *turn* is a run of one channel's consecutive segments in the merged, time-ordered list: it ends when
another channel's segment starts. An *overlap* is a stretch where segments of two channels both run; the
channel whose segment started later talked over the other (ties: nobody, `by` is None).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Utterance:
    """One stored segment with its results, as the analytics see it. Times in milliseconds."""

    channel: int
    label: str
    start_ms: int
    end_ms: int
    text: str = ""
    language: str | None = None
    emotion: str | None = None  # SenseVoice's tag
    emotion2vec_label: str | None = None
    emotion2vec_scores: dict[str, float] | None = None
    loudness_lufs: float | None = None
    words: int | None = None  # words counted from word timings, where the segment has them
    segment_id: str | None = None

    @property
    def seconds(self) -> float:
        return max(0, self.end_ms - self.start_ms) / 1000.0


@dataclass(frozen=True)
class Overlap:
    start_ms: int
    end_ms: int
    by: int | None  # the channel that started talking while the other was talking; None if both started together
    over: int | None  # the channel talked over
    channels: tuple[int, int]  # the two channels, lower index first

    @property
    def seconds(self) -> float:
        return (self.end_ms - self.start_ms) / 1000.0


@dataclass
class Turn:
    channel: int
    label: str
    utterances: list[Utterance] = field(default_factory=list)
    overlaps: list[Overlap] = field(default_factory=list)  # overlaps during this turn (by it or over it)
    start_ms: int = 0
    end_ms: int = 0

    def add(self, u: Utterance) -> None:
        if not self.utterances:
            self.start_ms, self.end_ms = u.start_ms, u.end_ms
        self.utterances.append(u)
        self.end_ms = max(self.end_ms, u.end_ms)

    @property
    def talk_seconds(self) -> float:
        return sum(u.seconds for u in self.utterances)

    @property
    def text(self) -> str:
        return " ".join(u.text.strip() for u in self.utterances if u.text and u.text.strip())


def ordered(utterances: list[Utterance]) -> list[Utterance]:
    return sorted(utterances, key=lambda u: (u.start_ms, u.end_ms, u.channel))


def _overlapping(utterances: list[Utterance]) -> list[tuple[Overlap, Utterance, Utterance]]:
    """(overlap, the later segment, the earlier one) for every pair of segments of two channels that overlap:
    a sweep over the time-ordered segments, each compared with the still-running segments of other channels."""
    out = []
    running: list[Utterance] = []
    for u in ordered(utterances):
        running = [r for r in running if r.end_ms > u.start_ms]
        for r in running:
            if r.channel == u.channel:
                continue
            start, end = u.start_ms, min(r.end_ms, u.end_ms)
            if end <= start:
                continue
            by, over = (None, None) if r.start_ms == u.start_ms else (u.channel, r.channel)
            out.append((Overlap(start, end, by, over, tuple(sorted((u.channel, r.channel)))), u, r))
        running.append(u)
    return out


def overlaps(utterances: list[Utterance]) -> list[Overlap]:
    """Every stretch where segments of two different channels both run, in time order."""
    return sorted((o for o, _, _ in _overlapping(utterances)), key=lambda o: (o.start_ms, o.end_ms))


def turns(utterances: list[Utterance]) -> list[Turn]:
    """Turns in time order, each holding the overlaps of its segments."""
    out: list[Turn] = []
    turn_of: dict[int, Turn] = {}
    for u in ordered(utterances):
        if not out or out[-1].channel != u.channel:
            out.append(Turn(u.channel, u.label))
        out[-1].add(u)
        turn_of[id(u)] = out[-1]
    for o, later, earlier in sorted(_overlapping(utterances), key=lambda x: (x[0].start_ms, x[0].end_ms)):
        turn_of[id(later)].overlaps.append(o)  # two channels: always two different turns
        turn_of[id(earlier)].overlaps.append(o)
    return out


def union(utterances: list[Utterance]) -> list[tuple[int, int]]:
    """The time covered by anyone's speech, as disjoint (start_ms, end_ms) intervals in order."""
    spans: list[list[int]] = []
    for u in ordered(utterances):
        if u.end_ms <= u.start_ms:
            continue
        if spans and u.start_ms <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], u.end_ms)
        else:
            spans.append([u.start_ms, u.end_ms])
    return [(s, e) for s, e in spans]
