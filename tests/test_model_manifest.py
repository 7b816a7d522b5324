"""The full-size network built from the official yaml on the meta device has exactly the official keys and shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

CLIP_PREFIXES = ("cond_stage_model.", "embedder.")


def _read_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        key, shape, _dtype = line.split("\t")
        out[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return out


@pytest.fixture(scope="module")
def meta_full(reference_dir):
    from geo4d_model.loader import build_network

    return build_network(reference_dir / "official_inference_geo4d.yaml", "meta")


def test_model_ckpt_manifest_matches_meta_build(reference_dir, meta_full):
    from geo4d_model.network import official_key_map, official_shapes

    net, _ = meta_full
    ours = official_shapes(net, official_key_map(net))
    manifest = {k: v for k, v in _read_tsv(reference_dir / "official_model_keys.tsv").items()
                if not k.startswith(CLIP_PREFIXES)}
    assert len(manifest) == 1516 + 282 + 51 + 13
    assert sorted(set(manifest) - set(ours)) == []
    assert sorted(set(ours) - set(manifest)) == []
    assert {k: ours[k] for k in manifest if ours[k] != manifest[k]} == {}
    # every group the issue names is present, including the unused first-stage adaptors and the misspelt key
    for prefix in ("model.diffusion_model.", "first_stage_model.encoder_adaptor.", "first_stage_model.decoder_adaptor.",
                   "image_proj_model.", "scale_arr"):
        assert any(k.startswith(prefix) for k in ours), prefix
    assert any(".temopral_conv." in k for k in ours)
    # meta build: no memory was allocated for weights
    assert all(t.is_meta for t in net.state_dict().values() if t.numel() > 1400)


def test_pointmap_vae_manifest_matches_meta_build(reference_dir, meta_full):
    from geo4d_model.network import official_shapes, pointmap_vae_key_map

    net, pm = meta_full
    ours = official_shapes(pm, pointmap_vae_key_map(net.cfg.pointmap_vae))
    manifest = _read_tsv(reference_dir / "official_pointmap_vae_keys.tsv")
    assert len(manifest) == 282
    assert ours == manifest
    assert all(k.startswith("model.") for k in ours)


def test_full_size_parameter_count(reference_dir, meta_full):
    """U-Net + VAE + resampler + buffers of the manifest = the numbers the meta build holds."""
    net, _ = meta_full
    manifest = _read_tsv(reference_dir / "official_model_keys.tsv")
    expected = sum(int(torch.Size(s).numel()) for k, s in manifest.items() if not k.startswith(CLIP_PREFIXES))
    ours = sum(t.numel() for t in net.state_dict().values())
    assert ours == expected
