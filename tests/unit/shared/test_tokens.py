import sentencepiece as spm

from shared.models.tokens import VOCAB_SIZE, parse_tags, random_sentencepiece


def test_parse_tags():
    out = parse_tags("<|en|><|NEUTRAL|><|Speech|><|woitn|>hello there")
    assert out == {"language": "en", "emotion": "neutral", "event": "Speech", "itn": False, "text": "hello there"}
    assert parse_tags("<|zh|><|HAPPY|><|BGM|><|withitn|>")["itn"] is True
    assert parse_tags("no tags")["language"] is None


def test_random_tokenizer_has_tags_at_sensevoice_ids():
    sp = spm.SentencePieceProcessor(model_proto=random_sentencepiece())
    assert sp.get_piece_size() == VOCAB_SIZE == 25055
    # ids that funasr's SenseVoiceSmall hard-codes (lid_int_dict, emo_dict, textnorm_int_dict)
    assert sp.id_to_piece(24885) == "<|en|>" and sp.id_to_piece(24884) == "<|zh|>"
    assert sp.id_to_piece(25001) == "<|HAPPY|>" and sp.id_to_piece(25009) == "<|EMO_UNKNOWN|>"
    assert sp.id_to_piece(25016) == "<|withitn|>" and sp.id_to_piece(25017) == "<|woitn|>"
    assert len({sp.id_to_piece(i) for i in range(VOCAB_SIZE)}) == VOCAB_SIZE
    assert parse_tags(sp.decode([24885, 25003, 24993, 25016]))["emotion"] == "angry"
