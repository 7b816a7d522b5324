"""The constant cross-attention context: computed once per checkpoint, then served from the cache."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_context_is_cached_by_checkpoint_fingerprint(reference_dir, tmp_path):
    from safetensors.torch import load_file

    from geo4d_model.context import cache_path, constant_context
    from geo4d_model.loader import load_official

    d = reference_dir / "fixtures" / "tiny"
    loaded = load_official(d / "config.yaml", d / "model.ckpt", d / "vae.ckpt")
    cases = load_file(str(d / "cases.safetensors"))
    calls = []

    def compute(clip_sd):  # the fixture carries the CLIP outputs instead of CLIP weights
        calls.append(1)
        return cases["ddim.text_emb"], cases["ddim.image_tokens"]

    ctx = constant_context(loaded, cache=tmp_path, compute=compute)
    with torch.no_grad():
        direct = loaded.network.context(cases["ddim.text_emb"], cases["ddim.image_tokens"])
    assert torch.allclose(ctx, direct, atol=1e-6)
    assert ctx.shape[0] == 1 and ctx.shape[1] > 77  # 77 text tokens + the resampled image tokens
    assert cache_path(loaded.fingerprint, tmp_path).is_file()
    again = constant_context(loaded, cache=tmp_path, compute=compute)
    assert len(calls) == 1 and torch.equal(again, ctx)
    loaded.fingerprint = "another-checkpoint"
    constant_context(loaded, cache=tmp_path, compute=compute)
    assert len(calls) == 2


def test_missing_clip_weights_and_no_cache_is_a_clear_error(reference_dir, tmp_path):
    from geo4d.errors import InputError
    from geo4d_model.context import constant_context
    from geo4d_model.loader import load_official

    d = reference_dir / "fixtures" / "tiny"
    loaded = load_official(d / "config.yaml", d / "model.ckpt", d / "vae.ckpt")
    with pytest.raises(InputError, match="no CLIP weights"):
        constant_context(loaded, cache=tmp_path)
