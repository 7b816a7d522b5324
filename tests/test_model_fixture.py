"""Parity with the official outputs: every stage of every shared fixture through `geo4d check-fixture`."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def _fixture_dirs(reference_dir: Path) -> list[Path]:
    root = reference_dir / "fixtures"
    return sorted(p for p in root.iterdir() if (p / "model.ckpt").is_file() and (p / "cases.safetensors").is_file())


def test_check_fixture_cli_all_stages_within_tolerance(reference_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    from geo4d_cli import main

    dirs = _fixture_dirs(reference_dir)
    assert dirs, "no parity fixture with model.ckpt + cases.safetensors found"
    for d in dirs:
        out = tmp_path / f"{d.name}.safetensors"
        args = ["check-fixture", "--config", str(d / "config.yaml"), "--checkpoint", str(d / "model.ckpt"),
                "--cases", str(d / "cases.safetensors"), "--out", str(out)]
        if (d / "vae.ckpt").is_file():
            args += ["--pointmap-vae", str(d / "vae.ckpt")]
        rc = main(args)
        text = capsys.readouterr().out
        assert rc == 0, f"{d.name}:\n{text}"
        assert "FAIL" not in text and "NOT PRODUCED" not in text
        cases = load_file(str(d / "cases.safetensors"))
        ours = load_file(str(out))
        import json

        expected = json.loads((d / "outputs.json").read_text()) if (d / "outputs.json").is_file() else []
        for name in expected:
            assert name in ours, f"{d.name}: {name} not written"
        compared = 0
        for name, ref in cases.items():
            if name in ours and name in expected:
                scale = float(ref.double().abs().max())
                diff = float((ours[name].double() - ref.double()).abs().max())
                assert diff <= 1e-4 * max(scale, 1e-12), f"{d.name}: {name} diff {diff:.3e} vs scale {scale:.3e}"
                compared += 1
        assert compared == len(expected)


def test_check_fixture_reports_failure_for_wrong_weights(reference_dir, tmp_path, capsys):
    """A perturbed U-Net weight (image value projection) must make check-fixture fail (exit 1) on unet.out."""
    from geo4d_cli import main

    d = reference_dir / "fixtures" / "tiny"
    if not (d / "model.ckpt").is_file():
        pytest.skip("tiny fixture absent")
    sd = torch.load(d / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    key = next(k for k in sd if k.endswith("attn2.to_v_ip.weight"))
    sd[key] = sd[key] * 1.5
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": sd}, bad)
    rc = main(["check-fixture", "--config", str(d / "config.yaml"), "--checkpoint", str(bad),
               "--pointmap-vae", str(d / "vae.ckpt"), "--cases", str(d / "cases.safetensors"),
               "--out", str(tmp_path / "o.safetensors"), "--stage", "unet"])
    text = capsys.readouterr().out
    assert rc == 1
    assert any(line.startswith("unet.out") and "FAIL" in line for line in text.splitlines())


def test_check_fixture_missing_pointmap_vae_is_reported(reference_dir, tmp_path, capsys):
    from geo4d_cli import main

    d = reference_dir / "fixtures" / "tiny"
    rc = main(["check-fixture", "--config", str(d / "config.yaml"), "--checkpoint", str(d / "model.ckpt"),
               "--cases", str(d / "cases.safetensors"), "--out", str(tmp_path / "o.safetensors"),
               "--stage", "pmvae.decode"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "pmvae.decode.out" in text and "needs --pointmap-vae" in text


def test_check_fixture_bad_out_path(reference_dir, tmp_path, capsys):
    from geo4d_cli import main

    d = reference_dir / "fixtures" / "tiny"
    rc = main(["check-fixture", "--config", str(d / "config.yaml"), "--checkpoint", str(d / "model.ckpt"),
               "--cases", str(d / "cases.safetensors"), "--out", str(tmp_path / "nodir" / "o.safetensors")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
