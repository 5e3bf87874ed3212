"""Tiny diffusers pipelines with random weights, built from configs (diffusers' own test pattern)
and saved to folders, so that the real loading code (`from_pretrained` on a folder) is exercised
offline."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _unet(cross_attention_dim=32, **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, **extra)


def _vae(blocks: int = 2):
    """A VAE that downsamples 2 ** (blocks - 1) times (the released models: 4 blocks, 8x)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=[32] + [64] * (blocks - 1), in_channels=3,
                         out_channels=3, down_block_types=["DownEncoderBlock2D"] * blocks,
                         up_block_types=["UpDecoderBlock2D"] * blocks, latent_channels=4)


def _image_encoder():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=4))
    return encoder.eval(), CLIPImageProcessor(crop_size=32, size=32)


def sd_image_variations(folder: Path, vae_blocks: int = 2) -> Path:
    from diffusers import PNDMScheduler, StableDiffusionImageVariationPipeline

    encoder, processor = _image_encoder()
    StableDiffusionImageVariationPipeline(
        unet=_unet(), scheduler=PNDMScheduler(skip_prk_steps=True), vae=_vae(vae_blocks),
        image_encoder=encoder, feature_extractor=processor, safety_checker=None,
        requires_safety_checker=False).save_pretrained(folder)
    return folder


def versatile_diffusion(folder: Path) -> Path:
    from diffusers import DDIMScheduler, VersatileDiffusionImageVariationPipeline

    encoder, processor = _image_encoder()
    VersatileDiffusionImageVariationPipeline(
        image_feature_extractor=processor, image_encoder=encoder, image_unet=_unet(),
        vae=_vae(), scheduler=DDIMScheduler()).save_pretrained(folder)
    return folder


def _tokenizer(folder: Path):
    """A CLIP tokenizer over a few characters, made in code (no download)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(vocab_file=str(folder / "vocab.json"),
                         merges_file=str(folder / "merges.txt"), model_max_length=16)


def unclip(folder: Path) -> Path:
    from diffusers import DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer)
    from transformers import CLIPTextConfig, CLIPTextModel

    encoder, processor = _image_encoder()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=32, projection_dim=32, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, pad_token_id=1,
        vocab_size=1000, max_position_embeddings=16))
    unet = _unet(class_embed_type="projection", projection_class_embeddings_input_dim=64,
                 attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=True)
    StableUnCLIPImg2ImgPipeline(
        feature_extractor=processor, image_encoder=encoder,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=32).eval(),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=_tokenizer(folder / "_tokenizer_files"), text_encoder=text_encoder.eval(),
        unet=unet.eval(), vae=_vae(),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False,
                                steps_offset=1)).save_pretrained(folder)
    return folder


def sdedit_ddpm(folder: Path, channels: int = 3) -> Path:
    from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=channels, out_channels=channels,
                       block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    DDPMPipeline(unet=unet, scheduler=DDIMScheduler()).save_pretrained(folder)
    return folder


BUILDERS = {"sd-image-variations": sd_image_variations,
            "versatile-diffusion": versatile_diffusion, "unclip": unclip, "sdedit": sdedit_ddpm}
