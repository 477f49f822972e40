"""Write SenseVoiceSmall and emotion2vec+ large folders with random weights, in the released layout.

model.pt carries speechq's random-weights marker inside it (shared.models.weights), so the flag
cannot be lost with a file; speechq-random.json beside it says the same for people. Provenance
carries the flag to every result. The folder is written beside the target and swapped in whole;
real weights are never replaced unless the caller passes force=True.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import yaml

from shared.models import folders, layouts, tokens, weights
from shared.models.weights import RANDOM_MARKER

log = logging.getLogger(__name__)
SENSEVOICE_BPE = "chn_jpn_yue_eng_ko_spectok.bpe.model"


class RealWeightsPresent(Exception):
    pass


def refuse_real_weights(target: Path, force: bool) -> None:
    """Raise unless `target` is empty, holds weights speechq wrote, or the caller forces it."""
    if force or not (Path(target) / "model.pt").exists():
        return
    try:
        speechq_wrote = weights.is_random(target)
    except OSError:
        speechq_wrote = False
    if not speechq_wrote:
        raise RealWeightsPresent(f"{target} holds weights that speechq did not write; pass --force to replace them")


def _finish(stage: Path, target: Path, model: torch.nn.Module, meta: dict, prefix: str = "") -> int:
    n_params = sum(p.numel() for p in model.parameters())
    meta = {**meta, "parameters": n_params}
    state = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(weights.mark_random(state, meta), stage / "model.pt")
    (stage / RANDOM_MARKER).write_text(json.dumps({**meta, "random": True}, indent=2))
    folders.swap_in(stage, target)
    log.info("wrote %s (%s, %.1f M parameters, random weights)", target, meta["size"], n_params / 1e6)
    return n_params


def write_sensevoice(target: Path, size: str = "tiny", seed: int = 0, force: bool = False) -> int:
    target = folders.resolve_target(target)
    refuse_real_weights(target, force)
    with folders.staging(target, "random") as stage:
        return _write_sensevoice(stage, target, size, seed)


def _write_sensevoice(stage: Path, target: Path, size: str, seed: int) -> int:
    from funasr.models.sense_voice.model import SenseVoiceSmall

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = layouts.sensevoice_config(size)
    (stage / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    (stage / SENSEVOICE_BPE).write_bytes(tokens.random_sentencepiece())
    (stage / "am.mvn").write_text(layouts.cmvn_text(560, rng))
    (stage / "configuration.json").write_text(json.dumps({
        "framework": "pytorch", "task": "auto-speech-recognition", "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "model_name_in_hub": {"ms": "iic/SenseVoiceSmall", "hf": "FunAudioLLM/SenseVoiceSmall"},
        "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                            "tokenizer_conf": {"bpemodel": SENSEVOICE_BPE},
                            "frontend_conf": {"cmvn_file": "am.mvn"}},
    }, indent=2))
    model = SenseVoiceSmall(input_size=560, vocab_size=tokens.VOCAB_SIZE, encoder=cfg["encoder"],
                            encoder_conf=cfg["encoder_conf"], **cfg["model_conf"])
    return _finish(stage, target, model, {"model": "iic/SenseVoiceSmall", "size": size, "seed": seed})


def write_emotion2vec(target: Path, size: str = "tiny", seed: int = 0, force: bool = False,
                      depth: int | None = None, prenet_depth: int | None = None) -> int:
    target = folders.resolve_target(target)
    refuse_real_weights(target, force)
    with folders.staging(target, "random") as stage:
        return _write_emotion2vec(stage, target, size, seed, depth, prenet_depth)


def _write_emotion2vec(stage: Path, target: Path, size: str, seed: int, depth: int | None,
                       prenet_depth: int | None) -> int:
    from funasr.models.emotion2vec.model import Emotion2vec

    torch.manual_seed(seed)
    cfg = layouts.emotion2vec_config(size, depth, prenet_depth)
    (stage / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    (stage / "tokens.txt").write_text("\n".join(layouts.EMOTION2VEC_LABELS) + "\n", encoding="utf-8")
    (stage / "configuration.json").write_text(json.dumps({
        "framework": "pytorch", "task": "emotion-recognition", "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "model_name_in_hub": {"ms": "iic/emotion2vec_plus_large", "hf": "emotion2vec/emotion2vec_plus_large"},
        "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                            "tokenizer_conf": {"token_list": "tokens.txt"}},
    }, indent=2, ensure_ascii=False))
    model = Emotion2vec(model_conf=cfg["model_conf"], vocab_size=len(layouts.EMOTION2VEC_LABELS))
    audio = cfg["model_conf"]["modalities"]["audio"]
    meta = {"model": "iic/emotion2vec_plus_large", "size": size, "seed": seed,
            "depth": cfg["model_conf"]["depth"], "prenet_depth": audio["prenet_depth"]}
    return _finish(stage, target, model, meta, prefix="d2v_model.")
