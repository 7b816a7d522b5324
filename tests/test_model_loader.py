"""load_official: strict key/shape checking, clear errors, CLIP keys optional, stored schedule used."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from geo4d.errors import InputError  # noqa: E402


@pytest.fixture(scope="module")
def tiny(reference_dir):
    d = reference_dir / "fixtures" / "tiny"
    if not (d / "model.ckpt").is_file():
        pytest.skip("tiny fixture absent")
    return d


@pytest.fixture(scope="module")
def tiny_sd(tiny):
    return torch.load(tiny / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_load_tiny_without_clip(tiny):
    from geo4d_model.loader import load_official

    loaded = load_official(tiny / "config.yaml", tiny / "model.ckpt", tiny / "vae.ckpt")
    assert loaded.clip_state_dict == {}
    assert loaded.pointmap_vae is not None
    assert not loaded.network.training
    assert all(not t.is_meta for t in loaded.network.state_dict().values())
    assert len(loaded.fingerprint) == 32
    # the stored schedule is attached, not recomputed
    sd = torch.load(tiny / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(loaded.network.alphas_cumprod, sd["alphas_cumprod"])
    assert torch.equal(loaded.network.scale_arr, sd["scale_arr"])


def test_clip_keys_are_kept_aside(tiny, tiny_sd, tmp_path):
    from geo4d_model.loader import load_official

    sd = dict(tiny_sd)
    sd["cond_stage_model.model.token_embedding.weight"] = torch.zeros(10, 4)
    sd["embedder.model.visual.conv1.weight"] = torch.zeros(4, 3, 2, 2)
    path = tmp_path / "with_clip.ckpt"
    torch.save({"state_dict": sd}, path)
    loaded = load_official(tiny / "config.yaml", path)
    assert sorted(loaded.clip_state_dict) == ["cond_stage_model.model.token_embedding.weight",
                                              "embedder.model.visual.conv1.weight"]
    assert loaded.pointmap_vae is None


def test_bf16_load_keeps_schedule_float32(tiny):
    from geo4d_model.loader import load_official

    loaded = load_official(tiny / "config.yaml", tiny / "model.ckpt", dtype=torch.bfloat16)
    assert loaded.network.unet.time_embed[0].weight.dtype == torch.bfloat16
    assert loaded.network.alphas_cumprod.dtype == torch.float32


def _save(tmp_path, sd, name="m.ckpt"):
    path = tmp_path / name
    torch.save({"state_dict": sd}, path)
    return path


def test_missing_unexpected_and_shape_errors_listed_together(tiny, tiny_sd, tmp_path):
    from geo4d_model.loader import load_official

    sd = dict(tiny_sd)
    del sd["model.diffusion_model.out.2.bias"]
    sd["model.diffusion_model.extra.weight"] = torch.zeros(3)
    sd["image_proj_model.latents"] = torch.zeros(1, 7, 64)
    path = _save(tmp_path, sd)
    with pytest.raises(InputError) as err:
        load_official(tiny / "config.yaml", path)
    msg = str(err.value)
    assert str(path) in msg
    assert "1 missing key(s): model.diffusion_model.out.2.bias" in msg
    assert "1 unexpected key(s): model.diffusion_model.extra.weight" in msg
    assert "image_proj_model.latents checkpoint [1, 7, 64] vs config [1, 16, 64]" in msg


def test_misspelling_fixed_checkpoint_is_refused(tiny, tiny_sd, tmp_path):
    """A checkpoint with `temporal_conv` (corrected spelling) does not silently load."""
    from geo4d_model.loader import load_official

    sd = {k.replace("temopral_conv", "temporal_conv"): v for k, v in tiny_sd.items()}
    with pytest.raises(InputError, match="missing key"):
        load_official(tiny / "config.yaml", _save(tmp_path, sd))


def test_truncated_checkpoint_names_the_file(tiny, tmp_path):
    from geo4d_model.loader import load_official

    data = (tiny / "model.ckpt").read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"truncated\.ckpt: cannot read the checkpoint \(truncated or corrupt\?\)"):
        load_official(tiny / "config.yaml", path)


def test_truncated_pointmap_vae_names_the_file(tiny, tmp_path):
    from geo4d_model.loader import load_official

    path = tmp_path / "vae_cut.ckpt"
    path.write_bytes((tiny / "vae.ckpt").read_bytes()[:1000])
    with pytest.raises(InputError, match="vae_cut.ckpt"):
        load_official(tiny / "config.yaml", tiny / "model.ckpt", path)


def test_missing_and_swapped_files(tiny, tmp_path):
    from geo4d_model.loader import load_official

    with pytest.raises(InputError, match="checkpoint file not found"):
        load_official(tiny / "config.yaml", tmp_path / "nope.ckpt")
    with pytest.raises(InputError, match="config file not found"):
        load_official(tmp_path / "nope.yaml", tiny / "model.ckpt")
    with pytest.raises(InputError, match="looks like the point-map VAE"):
        load_official(tiny / "config.yaml", tiny / "vae.ckpt")


def test_config_errors_name_file_and_key(tiny, tmp_path):
    import yaml

    from geo4d_model.config import load_config

    raw = yaml.safe_load((tiny / "config.yaml").read_text())
    del raw["model"]["params"]["unet_config"]["params"]["model_channels"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match=r"bad\.yaml: missing model\.params\.unet_config\.params\.model_channels"):
        load_config(path)


def test_schedule_from_config_matches_stored_buffers(reference_dir, tiny_sd):
    """The config's schedule (float64 math) reproduces the 13 stored buffers, and diffusers' float32
    DDIMScheduler agrees with the stored ᾱ to ~1e-6 (the sampler uses the stored ones)."""
    from geo4d_model.config import load_config
    from geo4d_model.network import SCHEDULE_BUFFERS, schedule_buffers
    from geo4d_model.sampler import DDIMSampler

    cfg = load_config(reference_dir / "official_inference_geo4d.yaml")
    ours = schedule_buffers(cfg.diffusion)
    for name in SCHEDULE_BUFFERS:
        a, b = ours[name], tiny_sd[name]
        assert a.shape == b.shape, name
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite), name
        assert torch.allclose(a[finite], b[finite], rtol=1e-5, atol=1e-7), name
    assert float(tiny_sd["alphas_cumprod"][999]) == 0.0
    sampler = DDIMSampler.from_network(type("N", (), {"cfg": cfg, "alphas_cumprod": tiny_sd["alphas_cumprod"],
                                                      "scale_arr": tiny_sd["scale_arr"]})())
    assert sampler.timesteps == [999, 799, 599, 399, 199]
    diff = (sampler.config_alphas_cumprod() - tiny_sd["alphas_cumprod"]).abs().max()
    assert float(diff) < 5e-6
    table = sampler.schedule_table()
    assert torch.allclose(table["a_prev"][0], tiny_sd["alphas_cumprod"][0])  # last step uses ᾱ[0], not 1
    ratio = table["scale_prev"] / table["scale"]
    assert torch.allclose(ratio, torch.tensor([1.0, 0.85037595 / 0.7, 1.0, 1.0, 1.0]), atol=1e-6)


def _same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_save_official_round_trip(tiny, tmp_path):
    """build_random → save_official → load_official gives identical tensors (network and point-map VAE),
    and the written files have the fixture's official key names and shapes."""
    from geo4d_model.loader import build_random, load_official, save_official

    net, pm = build_random(tiny / "config.yaml", seed=3)
    save_official(net, tmp_path / "model.ckpt", pm, tmp_path / "vae.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt", "vae.ckpt"]  # no temporary left
    loaded = load_official(tiny / "config.yaml", tmp_path / "model.ckpt", tmp_path / "vae.ckpt")
    _same_tensors(net, loaded.network)
    _same_tensors(pm, loaded.pointmap_vae)
    for name in ("model.ckpt", "vae.ckpt"):
        ours = torch.load(tmp_path / name, map_location="cpu", weights_only=True)["state_dict"]
        ref = torch.load(tiny / name, map_location="cpu", weights_only=True)["state_dict"]
        assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}, name


def test_save_official_bf16_keeps_schedule_float32(tiny, tmp_path):
    from geo4d_model.loader import build_random, load_official, save_official

    net, _ = build_random(tiny / "config.yaml", with_pointmap_vae=False)
    save_official(net, tmp_path / "model.ckpt", dtype=torch.bfloat16)
    sd = torch.load(tmp_path / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert sd["alphas_cumprod"].dtype == torch.float32
    assert sd["model.diffusion_model.out.2.bias"].dtype == torch.bfloat16
    loaded = load_official(tiny / "config.yaml", tmp_path / "model.ckpt", dtype=torch.bfloat16)
    w = net.unet.time_embed[0].weight
    assert torch.equal(loaded.network.unet.time_embed[0].weight, w.to(torch.bfloat16))
    with pytest.raises(ValueError, match="together"):
        save_official(net, tmp_path / "x.ckpt", vae_path=tmp_path / "v.ckpt")
