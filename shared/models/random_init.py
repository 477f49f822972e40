"""Write SenseVoiceSmall and emotion2vec+ large folders with random weights, in the released layout.

A marker file (speechq-random.json) flags the weights as random; provenance carries the flag to
every result. Real weights are never overwritten unless the caller passes force=True.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from shared.models import layouts, tokens

log = logging.getLogger(__name__)
RANDOM_MARKER = "speechq-random.json"
SENSEVOICE_BPE = "chn_jpn_yue_eng_ko_spectok.bpe.model"


class RealWeightsPresent(Exception):
    pass


def _prepare(target: Path, force: bool) -> None:
    if (target / "model.pt").exists() and not (target / RANDOM_MARKER).exists() and not force:
        raise RealWeightsPresent(f"{target} holds weights that speechq did not write; pass --force to replace them")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)


def _finish(target: Path, model: torch.nn.Module, meta: dict, prefix: str = "") -> int:
    state = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, target / "model.pt")
    n_params = sum(p.numel() for p in model.parameters())
    (target / RANDOM_MARKER).write_text(json.dumps({**meta, "parameters": n_params, "random": True}, indent=2))
    log.info("wrote %s (%s, %.1f M parameters, random weights)", target, meta["size"], n_params / 1e6)
    return n_params


def write_sensevoice(target: Path, size: str = "tiny", seed: int = 0, force: bool = False) -> int:
    from funasr.models.sense_voice.model import SenseVoiceSmall

    _prepare(target, force)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = layouts.sensevoice_config(size)
    (target / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    (target / SENSEVOICE_BPE).write_bytes(tokens.random_sentencepiece())
    (target / "am.mvn").write_text(layouts.cmvn_text(560, rng))
    (target / "configuration.json").write_text(json.dumps({
        "framework": "pytorch", "task": "auto-speech-recognition", "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "model_name_in_hub": {"ms": "iic/SenseVoiceSmall", "hf": "FunAudioLLM/SenseVoiceSmall"},
        "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                            "tokenizer_conf": {"bpemodel": SENSEVOICE_BPE},
                            "frontend_conf": {"cmvn_file": "am.mvn"}},
    }, indent=2))
    model = SenseVoiceSmall(input_size=560, vocab_size=tokens.VOCAB_SIZE, encoder=cfg["encoder"],
                            encoder_conf=cfg["encoder_conf"], **cfg["model_conf"])
    return _finish(target, model, {"model": "iic/SenseVoiceSmall", "size": size, "seed": seed})


def write_emotion2vec(target: Path, size: str = "tiny", seed: int = 0, force: bool = False,
                      depth: int | None = None, prenet_depth: int | None = None) -> int:
    from funasr.models.emotion2vec.model import Emotion2vec

    _prepare(target, force)
    torch.manual_seed(seed)
    cfg = layouts.emotion2vec_config(size, depth, prenet_depth)
    (target / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    (target / "tokens.txt").write_text("\n".join(layouts.EMOTION2VEC_LABELS) + "\n", encoding="utf-8")
    (target / "configuration.json").write_text(json.dumps({
        "framework": "pytorch", "task": "emotion-recognition", "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "model_name_in_hub": {"ms": "iic/emotion2vec_plus_large", "hf": "emotion2vec/emotion2vec_plus_large"},
        "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                            "tokenizer_conf": {"token_list": "tokens.txt"}},
    }, indent=2, ensure_ascii=False))
    model = Emotion2vec(model_conf=cfg["model_conf"], vocab_size=len(layouts.EMOTION2VEC_LABELS))
    meta = {"model": "iic/emotion2vec_plus_large", "size": size, "seed": seed,
            "depth": cfg["model_conf"]["depth"], "prenet_depth": cfg["model_conf"]["modalities"]["audio"]["prenet_depth"]}
    return _finish(target, model, meta, prefix="d2v_model.")
