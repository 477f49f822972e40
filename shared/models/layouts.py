"""Configurations of the released model folders, at full size and at a tiny size for tests.

Written from funasr's published descriptions (docs/tutorial/Tables.md for SenseVoiceSmall; the
model card and released config for emotion2vec+ large); depth of emotion2vec is a parameter.
"""

from __future__ import annotations

import numpy as np

SIZES = ("tiny", "full")


def sensevoice_config(size: str) -> dict:
    full = size == "full"
    return {
        "encoder": "SenseVoiceEncoderSmall",
        "encoder_conf": {
            "output_size": 512 if full else 64,
            "attention_heads": 4,
            "linear_units": 2048 if full else 128,
            "num_blocks": 50 if full else 2,
            "tp_blocks": 20 if full else 1,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
        },
        "model": "SenseVoiceSmall",
        "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
        "frontend": "WavFrontend",
        "frontend_conf": {
            "fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10,
            "lfr_m": 7, "lfr_n": 6, "cmvn_file": None, "dither": 0.0,
        },
    }


def emotion2vec_config(size: str, depth: int | None = None, prenet_depth: int | None = None) -> dict:
    full = size == "full"
    dim = 1024 if full else 64
    heads = 16 if full else 4
    conv = 512 if full else 64
    audio = {
        "type": "AUDIO",
        "add_masks": False, "alibi_max_pos": None, "alibi_scale": 1.0,
        "conv_pos_depth": 5, "conv_pos_groups": 16, "conv_pos_pre_ln": False,
        "conv_pos_width": 95,
        "decoder": {
            "add_positions_all": False, "add_positions_masked": False,
            "decoder_dim": 768 if full else 32, "decoder_groups": 16, "decoder_kernel": 7,
            "decoder_layers": 4, "decoder_residual": True, "input_dropout": 0.1,
            "projection_layers": 1, "projection_ratio": 2.0,
        },
        "ema_local_encoder": False, "encoder_zero_mask": True, "end_drop_path_rate": 0.0,
        "extractor_mode": "layer_norm",
        "feature_encoder_spec": f"[({conv}, 10, 5)] + [({conv}, 3, 2)] * 4 + [({conv},2,2)] + [({conv},2,2)]",
        "init_extra_token_zero": True, "inverse_mask": False, "keep_masked_pct": 0.0,
        "learned_alibi": False, "learned_alibi_scale": True, "learned_alibi_scale_per_head": True,
        "learned_alibi_scale_per_layer": False, "local_grad_mult": 1.0,
        "mask_channel_length": 64, "mask_channel_prob": 0.0, "mask_dropout": 0.0, "mask_length": 5,
        "mask_noise_std": 0.01, "mask_prob": 0.55, "mask_prob_adjust": 0.1, "mask_prob_min": None,
        "model_depth": depth or (16 if full else 2),
        "num_alibi_heads": heads, "num_extra_tokens": 10,
        "prenet_depth": prenet_depth or (8 if full else 1),
        "prenet_dropout": 0.1, "prenet_layerdrop": 0.0, "remove_masks": False,
        "start_drop_path_rate": 0.0, "use_alibi_encoder": True,
    }
    return {
        "model": "Emotion2vec",
        "model_conf": {
            "_name": "data2vec_multi",
            "activation_dropout": 0.0, "attention_dropout": 0.1,
            "average_top_k_layers": depth or (16 if full else 2),
            "clone_batch": 12, "depth": depth or (16 if full else 2), "dropout_input": 0.0,
            "embed_dim": dim, "encoder_dropout": 0.1, "end_drop_path_rate": 0.0,
            "end_of_block_targets": False, "layer_norm_first": False, "layerdrop": 0.0,
            "mlp_ratio": 4.0, "normalize": True, "norm_affine": True, "norm_eps": 1.0e-05,
            "num_heads": heads, "post_mlp_drop": 0.1, "start_drop_path_rate": 0.0,
            "supported_modality": "AUDIO", "skip_ema": False,
            "modalities": {"_name": None, "audio": audio},
        },
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "scope_map": ["d2v_model.", "none"],
    }


EMOTION2VEC_LABELS = ["生气/angry", "厌恶/disgusted", "恐惧/fearful", "开心/happy", "中立/neutral",
                      "其他/other", "难过/sad", "吃惊/surprised", "<unk>"]


def cmvn_text(dim: int, rng: np.random.Generator) -> str:
    """A Kaldi nnet1 CMVN file (am.mvn): shift by -mean, scale by 1/std."""
    means = -rng.uniform(8.0, 16.0, dim)
    scales = rng.uniform(0.1, 0.4, dim)
    fmt = lambda v: " ".join(f"{x:.6g}" for x in v)  # noqa: E731
    return (
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n<AddShift> {dim} {dim}\n"
        f"<LearnRateCoef> 0 [ {fmt(means)} ]\n<Rescale> {dim} {dim}\n"
        f"<LearnRateCoef> 0 [ {fmt(scales)} ]\n</Nnet>\n"
    )
