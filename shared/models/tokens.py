"""SenseVoice's rich-transcription tags and a tokenizer in its released (SentencePiece) format.

The ids of the language, emotion and text-normalisation tags are the ones funasr's
SenseVoiceSmall hard-codes (lid_int_dict, emo_dict, textnorm_int_dict); event tags sit between.
A random model's tokenizer holds the tags at those ids and filler pieces elsewhere, 25055 in all.
"""

from __future__ import annotations

import itertools
import re
import string

VOCAB_SIZE = 25055

LANGUAGE_TAGS = {24884: "zh", 24885: "en", 24888: "yue", 24892: "ja", 24896: "ko", 24992: "nospeech"}
EVENT_TAGS = {24993: "Speech", 24994: "Applause", 24995: "BGM", 24996: "Laughter", 24997: "Cry",
              24998: "Sneeze", 24999: "Breath", 25000: "Cough", 25010: "Event_UNK"}
EMOTION_TAGS = {25001: "HAPPY", 25002: "SAD", 25003: "ANGRY", 25004: "NEUTRAL", 25005: "FEARFUL",
                25006: "DISGUSTED", 25007: "SURPRISED", 25009: "EMO_UNKNOWN"}
ITN_TAGS = {25016: "withitn", 25017: "woitn"}

TAG = re.compile(r"<\|([^|]+)\|>")
LANGUAGES = {"auto", "zh", "en", "yue", "ja", "ko", "nospeech"}
_KNOWN_EVENTS = set(EVENT_TAGS.values())
_KNOWN_EMOTIONS = set(EMOTION_TAGS.values())


def parse_tags(text: str) -> dict:
    """Split SenseVoice output such as '<|en|><|NEUTRAL|><|Speech|><|woitn|>hello' into fields."""
    out = {"language": None, "emotion": None, "event": None, "itn": None, "text": ""}
    for tag in TAG.findall(text):
        if tag in ITN_TAGS.values():
            out["itn"] = tag == "withitn"
        elif tag in _KNOWN_EMOTIONS or tag.isupper():
            out["emotion"] = out["emotion"] or tag.lower()
        elif tag in _KNOWN_EVENTS or tag[:1].isupper():
            out["event"] = out["event"] or tag
        else:
            out["language"] = out["language"] or tag
    out["text"] = TAG.sub("", text).strip()
    return out


def special_pieces() -> dict[int, str]:
    tags = {**LANGUAGE_TAGS, **EVENT_TAGS, **EMOTION_TAGS, **ITN_TAGS}
    return {i: f"<|{name}|>" for i, name in tags.items()}


def random_sentencepiece(vocab_size: int = VOCAB_SIZE) -> bytes:
    """A serialized SentencePiece unigram model with the SenseVoice tags at their ids."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    model.trainer_spec.vocab_size = vocab_size
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = True
    specials = special_pieces()
    filler = _filler_pieces()
    for i in range(vocab_size):
        piece = model.pieces.add()
        if i == 0:
            piece.piece, piece.type = "<unk>", pb.ModelProto.SentencePiece.UNKNOWN
        elif i in (1, 2):
            piece.piece, piece.type = ("<s>", "</s>")[i - 1], pb.ModelProto.SentencePiece.CONTROL
        elif i in specials:
            piece.piece, piece.type = specials[i], pb.ModelProto.SentencePiece.USER_DEFINED
        else:
            piece.piece, piece.type = next(filler), pb.ModelProto.SentencePiece.NORMAL
            piece.score = -float(i) / 1000.0
    return model.SerializeToString()


def _filler_pieces():
    letters = string.ascii_lowercase
    yield from letters
    for n in itertools.count(1):
        for combo in itertools.product(letters, repeat=n):
            yield "\u2581" + "".join(combo)
        if n >= 2:
            for combo in itertools.product(letters, repeat=n + 1):
                yield "".join(combo)
