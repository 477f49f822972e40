"""Token and word timings of SenseVoice's output: funasr's `output_timestamp=True`, for a whole batch.

funasr 1.4.16 (SenseVoiceSmall.inference) does, per utterance: re-tokenise the decoded text and drop
its first 4 pieces (the tags), take the CTC log-probabilities of the frames after the 4 query
frames, set the blank's to 0 where blank is the best token, force-align the pieces to those frames
(Viterbi, `ctc_forced_align`), and give every run of a non-blank piece the times
`max(60 f - 30, 0)` .. `60 f' - 30` ms; `post` then joins pieces into words.

Here the same values come from one Viterbi per group of like-sized segments of the batch (`groups`:
a whole batch padded to its longest segment and its most pieces is mostly padding, which cost 3-4x
the host time; `viterbi` is vectorised over segments and states; ties are broken as funasr breaks
them), on emissions gathered for each
segment's own pieces only: the encoder output of a frame times the CTC head's rows of those
pieces, less the frame's log-sum-exp over the vocabulary (computed on the device with the
forward). Nothing of the size of the vocabulary leaves the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

QUERY_FRAMES = 4  # language, event, emotion, ITN: their outputs are the tags, not aligned
FRAME_MS = 60  # one SenseVoice frame (LFR 6 x 10 ms)
EMPTY_PIECE_ID = 124  # funasr's id for a piece that re-encodes to nothing


@dataclass
class Token:
    """A piece of the transcript and its time within the segment, in seconds."""
    piece: str
    start_s: float
    end_s: float


@dataclass
class Word:
    """A word (pieces joined as funasr's `post` joins them) and its time within the segment, in seconds."""
    text: str
    start_s: float
    end_s: float


@dataclass
class Timings:
    tokens: list[Token]
    words: list[Word]


def pieces(tokenizer, text: str) -> tuple[list[str], list[int]]:
    """funasr's targets: the decoded text (tags included) encoded again, less its first 4 pieces,
    and their ids (a piece may give several ids; one that gives none stands as EMPTY_PIECE_ID)."""
    tokens = tokenizer.text2tokens(text)[QUERY_FRAMES:]
    ids: list[int] = []
    for found in tokenizer.tokens2ids(tokens):
        ids.extend(found) if found else ids.append(EMPTY_PIECE_ID)
    return tokens, ids


def viterbi(emissions: torch.Tensor, skips: torch.Tensor, frames: np.ndarray, finals: np.ndarray) -> np.ndarray:
    """The best CTC path of every segment of a batch at once.

    emissions: (B, T, S) float, the log-probability of each state's label at each frame; states
    alternate blank and target (blank, t1, blank, t2, ..., tL, blank), padded past 2 L + 1.
    skips: (B, S) bool, whether a state may be reached from two states back (a target that differs
    from the one before it). frames: (B,) valid frames (at least 1). finals: (B,) 2 L - 1, the state of
    the last target. Returns (B, T) the state of each frame (-1 past the segment's frames).

    Same path as funasr's ctc_forced_align run on each segment alone: of equal predecessors the
    nearest wins (stay, then one back, then two), and of the two final states the last target.
    Segments are ordered longest first, so that each step updates only those still running.
    """
    batch, width, nstates = emissions.shape
    order = np.argsort(-frames, kind="stable")
    frames = frames[order]
    if (order != np.arange(batch)).any():  # a copy of the emissions: callers pass them longest first
        index = torch.from_numpy(order)
        emissions, skips = emissions[index], skips[index]
    neg = torch.tensor(float("-inf"), dtype=emissions.dtype)
    # two -inf columns in front, as in funasr: states 0 and 1 have fewer predecessors
    score = torch.full((batch, nstates + 2), float("-inf"), dtype=emissions.dtype)
    score[:, 2:4] = emissions[:, 0, :2]
    back = torch.zeros((batch, width, nstates), dtype=torch.int8)
    running = np.searchsorted(-frames, -np.arange(width), side="left")  # segments with more than t frames
    for t in range(1, int(frames[0]) if batch else 0):
        k = int(running[t])
        stay, one = score[:k, 2:], score[:k, 1:-1]
        two = torch.where(skips[:k], score[:k, :-2], neg)
        best = torch.maximum(stay, one)
        step = (one > stay).to(torch.int8)
        farther = two > best
        best = torch.where(farther, two, best)
        step = torch.where(farther, 2, step)
        score[:k, 2:] = best + emissions[:k, t]
        back[:k, t] = step
    # each segment's score stopped at its last frame: it is not updated once it has ended
    rows = np.arange(batch)
    finals = finals[order]
    ends = score[:, 2:].numpy()
    state = finals + (ends[rows, finals + 1] > ends[rows, finals])
    back = back.numpy()
    path = np.full((batch, width), -1, dtype=np.int64)
    for t in range(int(frames[0]) - 1 if batch else -1, -1, -1):
        k = int(running[t])
        path[:k, t] = state[:k]
        if t:
            state[:k] -= back[rows[:k], t, state[:k]]
    out = np.empty_like(path)
    out[order] = path
    return out


def emissions(hidden: list[torch.Tensor], lse: list[torch.Tensor], best: list[np.ndarray],
              columns: list[np.ndarray], states: list[np.ndarray], weight: torch.Tensor, bias: torch.Tensor,
              blank: int) -> torch.Tensor:
    """(B, T, S) log-probability of each state's label at each aligned frame: encoder output x the CTC
    head's rows of the segment's own labels (`columns`, blank first; `states` the column of each
    state) - log-sum-exp, with the blank's set to 0 where blank is the best token (as funasr does).
    Past a segment's frames and states: 0 (never read)."""
    width = max(h.shape[0] for h in hidden)
    out = torch.zeros((len(hidden), width, max(len(st) for st in states)))
    for i, (h, z, b, cols, st) in enumerate(zip(hidden, lse, best, columns, states)):
        index = torch.from_numpy(cols)
        rows = torch.addmm(bias[index], h.float(), weight[index].T) - z.float()[:, None]
        rows[torch.from_numpy(b == blank), 0] = 0.0
        torch.index_select(rows, 1, torch.from_numpy(st), out=out[i, : h.shape[0], : len(st)])
    return out


def align(tokenizer, texts: list[str], best: list[np.ndarray], hidden: list[torch.Tensor], lse: list[torch.Tensor],
          weight: torch.Tensor, bias: torch.Tensor, blank: int = 0) -> list[Timings | None]:
    """Timings of a batch: `texts` decoded with their tags; per segment, the best token of every frame,
    the encoder output and the log-sum-exp of every frame (query frames included, on the host);
    `weight`, `bias` the CTC head (float32, host). None where funasr gives no timestamps (no pieces,
    no frames)."""
    if blank != 0:
        raise ValueError("the alignment puts the blank in column 0: its id must be 0, as SenseVoice's is")
    out: list[Timings | None] = [None] * len(texts)
    todo, states, columns, tokens = [], [], [], []
    for i, text in enumerate(texts):
        pieces_i, ids = pieces(tokenizer, text)
        if not ids or len(best[i]) <= QUERY_FRAMES:
            continue
        # each distinct id is one column of the head (the blank, id 0 below every piece, column 0);
        # states alternate blank and target: blank, t1, blank, t2, ..., tL, blank
        cols, target = np.unique(np.r_[blank, ids], return_inverse=True)
        st = np.zeros(2 * len(ids) + 1, dtype=np.int64)
        st[1::2] = target[1:]
        todo.append(i)
        states.append(st)
        columns.append(cols)
        tokens.append(pieces_i)
    if not todo:
        return out
    longest_first = sorted(range(len(todo)), key=lambda j: -len(best[todo[j]]))  # as `viterbi` runs them
    todo, states, columns, tokens = ([x[j] for j in longest_first] for x in (todo, states, columns, tokens))
    frames = np.array([len(best[i]) - QUERY_FRAMES for i in todo])
    nstates = np.array([len(st) for st in states])
    for group in groups(frames, nstates):  # segments of like sizes: little padding to fill and step over
        skips = np.zeros((group.stop - group.start, int(nstates[group].max())), dtype=bool)
        for j, st in enumerate(states[group]):  # a target may skip the blank before it unless it repeats the one before
            skips[j, 2: len(st)] = st[2:] != st[:-2]
        part = todo[group]
        emit = emissions([hidden[i][QUERY_FRAMES:] for i in part], [lse[i][QUERY_FRAMES:] for i in part],
                         [best[i][QUERY_FRAMES:] for i in part], columns[group], states[group], weight, bias, blank)
        path = viterbi(emit, torch.from_numpy(skips), frames[group], nstates[group] - 2)
        for j, k in enumerate(range(group.start, group.stop)):
            ids = columns[k][states[k][path[j, : frames[k]]]]
            out[todo[k]] = _timings(ids, tokens[k], int(frames[k]), blank)
    return out


def groups(frames: np.ndarray, nstates: np.ndarray, slack: float = 2.0) -> list[slice]:
    """Consecutive slices of segments ordered longest first, each padded to its first segment's frames and its
    most states at no more than `slack` times the emissions its segments really have (one segment at least):
    the padded (B, T, S) of a whole batch of mixed lengths is mostly padding, filled and stepped over."""
    out, start, n = [], 0, len(frames)
    while start < n:
        end, real, most = start + 1, float(frames[start] * nstates[start]), int(nstates[start])
        while end < n:
            wider = max(most, int(nstates[end]))
            if (end + 1 - start) * frames[start] * wider > slack * (real + frames[end] * nstates[end]):
                break
            real, most, end = real + float(frames[end] * nstates[end]), wider, end + 1
        out.append(slice(start, end))
        start = end
    return out


def _timings(ids: np.ndarray, tokens: list[str], frames: int, blank: int) -> Timings:
    """Runs of equal ids on the aligned frames -> pieces with funasr's times, then words."""
    edges = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1], True])
    starts, ends, run_ids = edges[:-1], edges[1:], ids[edges[:-1]]
    keep = run_ids != blank
    starts, ends = starts[keep], ends[keep]
    count = min(len(starts), len(tokens))  # funasr fails on an index error past its pieces
    # funasr's arithmetic, in the same order on doubles (its `post` truncates to whole ms)
    left = np.maximum((starts[:count] * FRAME_MS - FRAME_MS // 2) / 1000, 0)
    right = np.minimum((ends[:count] * FRAME_MS - FRAME_MS // 2) / 1000, (frames * FRAME_MS - FRAME_MS // 2) / 1000)
    left_ms = (left * 1000).astype(np.int64)
    right_ms = (right * 1000).astype(np.int64)
    toks = [Token(tokens[k], float(left_ms[k]) / 1000, float(right_ms[k]) / 1000) for k in range(count)]
    return Timings(toks, words(toks))


def words(tokens: list[Token]) -> list[Word]:
    """funasr's `post`: a piece starting with '▁' starts a word (the '▁' dropped, except on the first
    piece), ASCII letters join the ASCII-letter word before them, a lone '▁' is dropped, anything
    else (CJK characters, digits, punctuation) is a word of its own."""
    out: list[Word] = []
    prev = None
    for i, tok in enumerate(tokens):
        word = tok.piece
        if word == "\u2581":
            continue
        if i == 0:
            out.append(Word(word, tok.start_s, tok.end_s))
        elif word.startswith("\u2581"):
            word = word[1:]
            out.append(Word(word, tok.start_s, tok.end_s))
        elif prev is not None and prev.isalpha() and prev.isascii() and word.isalpha() and word.isascii():
            word = prev + word
            out[-1].text, out[-1].end_s = word, tok.end_s
        else:
            out.append(Word(word, tok.start_s, tok.end_s))
        prev = word
    return out
