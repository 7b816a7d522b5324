"""CLIP conditioners on transformers classes: parity with the official open_clip outputs, key mapping."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_clip(reference_dir):
    from safetensors.torch import load_file

    d = reference_dir / "fixtures" / "tiny_clip"
    cfg = json.loads((d / "open_clip_config.json").read_text())["model_cfg"]
    return load_file(str(d / "weights.safetensors")), load_file(str(d / "cases.safetensors")), cfg


def _tol(ref):
    return 1e-4 * float(ref.abs().max())


def test_text_and_image_towers_match_the_official_outputs(tiny_clip):
    from geo4d_model import clip

    sd, cases, cfg = tiny_clip
    text = clip.build_text_encoder(sd, heads=cfg["text_cfg"]["heads"])
    out = clip.encode_text(text, cases["clip.text.tokens"])
    assert (out - cases["clip.text.out"]).abs().max() <= _tol(cases["clip.text.out"])
    # Negative control: the last layer instead of penultimate + final LN is far off.
    wrong = text(input_ids=cases["clip.text.tokens"]).last_hidden_state
    assert (wrong - cases["clip.text.out"]).abs().max() > 0.1
    vision = clip.build_vision_encoder(sd, heads=cfg["vision_cfg"]["width"] // cfg["vision_cfg"]["head_width"])
    for suffix in ("", "_256x576", "_192x640"):
        pre = clip.preprocess(cases[f"clip.image.in{suffix}"])
        assert (pre - cases[f"clip.image.preprocessed{suffix}"]).abs().max() <= 1e-5
        tokens = clip.encode_image(vision, cases[f"clip.image.in{suffix}"])
        ref = cases[f"clip.image.out{suffix}"]
        assert tokens.shape == ref.shape and (tokens - ref).abs().max() <= _tol(ref)


def test_prompt_ids_are_the_fixture_tokens(tiny_clip):
    from geo4d_model import clip

    _, cases, _ = tiny_clip
    assert cases["clip.text.tokens"][0].tolist() == clip.GEO4D_PROMPT_IDS
    assert cases["clip.text.tokens"][1].tolist() == clip.EMPTY_PROMPT_IDS


def test_full_size_mapping_matches_the_official_manifest(reference_dir):
    """Every official CLIP entry maps onto a ViT-H-14 transformers tower with the right shape, or is dead."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from geo4d_model import clip

    sd = {}
    for line in (reference_dir / "official_model_keys.tsv").read_text().splitlines():
        key, shape, _ = line.split("\t")
        if key.startswith(("cond_stage_model.", "embedder.")):
            dims = [int(x) for x in shape.strip("[]").split(",") if x.strip()]
            sd[key] = torch.empty(dims, device="meta")
    assert len(sd) == 294 + 398
    with torch.device("meta"):
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                                            num_hidden_layers=24, num_attention_heads=16, max_position_embeddings=77,
                                            hidden_act="gelu", projection_dim=1024))
        vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                                  num_attention_heads=16, image_size=224, patch_size=14,
                                                  hidden_act="gelu", projection_dim=1024))
    for model, mapped in ((text, clip.text_state_dict(sd)), (vision, clip.vision_state_dict(sd))):
        mapped = clip._strip_prefix(model, mapped)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        assert set(mapped) == set(expected)
        assert {k: tuple(v.shape) for k, v in mapped.items()} == expected
    leftovers = [k for k in sd if k not in clip.DEAD_KEYS and not k.startswith((clip.TEXT_PREFIX, clip.VISION_PREFIX))]
    assert leftovers == []


def test_check_fixture_cli_on_the_clip_fixture(reference_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    from geo4d_cli import main

    d = reference_dir / "fixtures" / "tiny_clip"
    out = tmp_path / "out.safetensors"
    rc = main(["check-fixture", "--config", str(d / "open_clip_config.json"), "--checkpoint", str(d / "weights.safetensors"),
               "--cases", str(d / "cases.safetensors"), "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    got, ref = load_file(str(out)), load_file(str(d / "cases.safetensors"))
    for name in ("clip.text.out", "clip.image.out", "clip.image.out_256x576", "clip.image.out_192x640"):
        assert (got[name] - ref[name]).abs().max() <= 1e-4 * float(ref[name].abs().max()), name
