"""Typed specs: predictor, sampler, model config; one-line errors; fingerprints from the full spec."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

from geo4d.errors import InputError
from geo4d.spec import Spec, jsonable
from geo4d_model.config import config_from_dict
from geo4d_model.settings import SamplerSettings
from pipeline.predictors import (
    Geo4DPredictorSpec,
    SyntheticPredictorSpec,
    parse_predictor_spec,
    predictor_image_size,
    spec_fingerprint,
)

GEO4D = {"kind": "geo4d", "config": "c.yaml", "checkpoint": "m.ckpt", "pointmap_vae": "v.ckpt"}


class _Example(Spec):
    level: float = 0.0
    name: str = "x"


def test_spec_errors_are_one_line_naming_the_key():
    with pytest.raises(InputError, match=r"^_Example: unknown key 'levle' \(allowed: level, name\)$"):
        _Example.parse({"levle": 1})
    with pytest.raises(InputError, match=r"^_Example: level: .*valid number.*'high'"):
        _Example.parse({"level": "high"})
    assert _Example.parse(None) == _Example() and _Example.parse({"level": 2}).level == 2.0


def test_jsonable_turns_numpy_and_non_finite_values_into_json():
    assert jsonable({"a": np.float32(1.5), "b": (np.int64(2), float("nan")), "c": np.eye(2)}) == {
        "a": 1.5, "b": [2, None], "c": [[1.0, 0.0], [0.0, 1.0]]}


def test_predictor_spec_kinds_and_defaults():
    s = parse_predictor_spec(None)
    assert isinstance(s, SyntheticPredictorSpec) and s.noise.depth_noise == 0 and s.seed == 0
    g = parse_predictor_spec(GEO4D)
    assert isinstance(g, Geo4DPredictorSpec) and predictor_image_size(g) == (320, 512) and g.fs is None
    assert g.sampler == SamplerSettings() and g.sampler.steps == 5
    assert predictor_image_size(GEO4D | {"image_size": [384, 512]}) == (384, 512)
    assert predictor_image_size({"kind": "synthetic"}) is None
    assert parse_predictor_spec(g) is g


@pytest.mark.parametrize("spec, message", [
    ({"kind": "magic"}, r"^predictor: kind 'magic' is unknown \(expected 'synthetic' or 'geo4d'\)$"),
    ({"kind": "synthetic", "nosie": {}}, r"^predictor \(synthetic\): unknown key 'nosie' \(allowed: ground_truth, kind, noise, seed\)$"),
    ({"kind": "synthetic", "noise": {"depth_nois": 1}}, r"^predictor \(synthetic\): unknown key 'depth_nois' \(allowed: .*depth_noise"),
    ({"kind": "geo4d", "config": "c", "checkpoint": "m"}, r"^predictor \(geo4d\): pointmap_vae is required$"),
    (GEO4D | {"dtype": "float64"}, r"^predictor \(geo4d\): dtype: "),
    (GEO4D | {"sampler": {"steps": 0}}, r"^predictor \(geo4d\): sampler\.steps: .*greater than or equal to 1"),
])
def test_predictor_spec_errors(spec, message):
    with pytest.raises(InputError, match=message):
        parse_predictor_spec(spec)


def test_fingerprint_is_the_full_spec_without_file_locations():
    base = spec_fingerprint(parse_predictor_spec(GEO4D))
    assert base["sampler"]["steps"] == 5 and base["dtype"] == "float32" and "checkpoint" not in base
    moved = spec_fingerprint(parse_predictor_spec(GEO4D | {"checkpoint": "/elsewhere/m.ckpt"}))
    assert moved == base
    for change in ({"sampler": {"steps": 10}}, {"dtype": "bfloat16"}, {"autocast": "off"}, {"compile": True},
                   {"seed": 1}, {"fs": 8}, {"image_size": [384, 512]}):
        assert spec_fingerprint(parse_predictor_spec(GEO4D | change)) != base, change
    # Where and in what batches the same computation runs does not enter.
    for same in ({"device": "cuda:1"}, {"window_batch": 1}, {"vae_batch": 4}, {"context": "/x/ctx.safetensors"}):
        assert spec_fingerprint(parse_predictor_spec(GEO4D | same)) == base, same


def _tiny_config(reference_dir) -> dict:
    return yaml.safe_load((reference_dir / "fixtures" / "tiny" / "config.yaml").read_text())


def test_model_config_reads_the_official_schema(reference_dir):
    cfg = config_from_dict(_tiny_config(reference_dir), "tiny.yaml")
    assert cfg.unet.in_channels == cfg.diffusion.channels + cfg.first_stage.embed_dim
    assert cfg.pointmap_vae is not None and cfg.pointmap_vae.adaptor is not None


@pytest.mark.parametrize("edit, message", [
    (lambda u: u.pop("context_dim"), r"^tiny\.yaml: missing model\.params\.unet_config\.params\.context_dim$"),
    (lambda u: u.update(model_channels="abc"), r"^tiny\.yaml: model\.params\.unet_config\.params\.model_channels = 'abc' is not valid"),
    (lambda u: u.update(use_causal_attention=True), r"use_causal_attention = true is not supported"),
])
def test_model_config_errors_name_file_and_key(reference_dir, edit, message):
    raw = copy.deepcopy(_tiny_config(reference_dir))
    edit(raw["model"]["params"]["unet_config"]["params"])
    with pytest.raises(InputError, match=message):
        config_from_dict(raw, "tiny.yaml")


def test_cli_refuses_bad_fusion_options_before_any_work(tmp_path, capsys):
    from geo4d_cli import main as cli

    video = tmp_path / "v.mp4"
    video.write_bytes(b"not read")
    rc = cli(["reconstruct", str(video), "--store", str(tmp_path / "s.zarr"), "--fusion", '{"smooth_rot_degg": 1}'])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --fusion: unknown key 'smooth_rot_degg' (allowed: ") and "\n" not in err
    assert not (tmp_path / "s.zarr").exists()
