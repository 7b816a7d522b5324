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


# ---- context files and `geo4d context` --------------------------------------------------------------
def _tiny_clip_weights(reference_dir, text_width: int, vision_width: int) -> dict:
    """Random CLIP towers in the official key layout (the key set of fixtures/tiny_clip), resized to the
    given widths: the tiny_clip towers (text 32, vision 64) do not fit fixtures/tiny (text 64, image 32)."""
    from safetensors import safe_open

    src = reference_dir / "fixtures" / "tiny_clip" / "weights.safetensors"
    gen = torch.Generator().manual_seed(0)
    out = {}
    with safe_open(str(src), framework="pt") as f:
        for key in f.keys():
            shape = f.get_slice(key).get_shape()
            if key.startswith("cond_stage_model."):
                old, new = 32, text_width
            elif key.startswith("embedder.model.visual."):
                old, new = 64, vision_width
            else:  # the image embedder's unused text parts: kept as stored
                out[key] = f.get_tensor(key)
                continue
            shape = [d // old * new if d in (old, 3 * old, 4 * old) else d for d in shape]
            value = 0.05 * torch.randn(shape, generator=gen)
            if ".ln_" in key and key.endswith(".weight"):
                value += 1.0
            out[key] = value
    return out


@pytest.fixture(scope="module")
def ckpt_with_clip(reference_dir, tmp_path_factory):
    """(config, model.ckpt): fixtures/tiny plus CLIP towers that fit its context."""
    import yaml

    d = reference_dir / "fixtures" / "tiny"
    params = yaml.safe_load((d / "config.yaml").read_text())["model"]["params"]
    text_width = params["unet_config"]["params"]["context_dim"]
    vision_width = params["image_proj_stage_config"]["params"]["embedding_dim"]
    sd = dict(torch.load(d / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"])
    sd.update(_tiny_clip_weights(reference_dir, text_width, vision_width))
    path = tmp_path_factory.mktemp("ckpt") / "with_clip.ckpt"
    torch.save({"state_dict": sd}, path)
    return d / "config.yaml", path


def test_context_cli_writes_the_constant_context(ckpt_with_clip, tmp_path, capsys):
    from safetensors import safe_open

    from geo4d_cli import main
    from geo4d_model.context import constant_context, read_context_file
    from geo4d_model.loader import file_fingerprint, load_official

    config, ckpt = ckpt_with_clip
    out = tmp_path / "new" / "dir" / "ctx.safetensors"
    assert main(["context", "--config", str(config), "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    ctx = read_context_file(out, context_dim=64)
    assert printed == [f"context {tuple(ctx.shape)} of {ckpt} → {out}"]
    direct = constant_context(load_official(config, ckpt), cache=tmp_path / "cache")
    assert ctx.dtype == torch.float32 and ctx.shape == direct.shape and ctx.shape[1] > 77
    assert torch.allclose(ctx, direct, rtol=0, atol=1e-6)
    assert ctx.abs().max() > 0
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["checkpoint_fingerprint"] == file_fingerprint(ckpt)
    assert sorted(p.name for p in out.parent.iterdir()) == ["ctx.safetensors"]  # no temporary left


def test_context_cli_without_clip_weights_exits_2(reference_dir, tmp_path, capsys):
    from geo4d_cli import main

    d = reference_dir / "fixtures" / "tiny"
    out = tmp_path / "ctx.safetensors"
    rc = main(["context", "--config", str(d / "config.yaml"), "--checkpoint", str(d / "model.ckpt"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"error: {d / 'model.ckpt'}: has no CLIP weights")
    assert not out.exists()


def test_context_cli_with_towers_that_do_not_fit_exits_2(reference_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    from geo4d_cli import main

    d = reference_dir / "fixtures" / "tiny"
    sd = dict(torch.load(d / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"])
    sd.update(load_file(str(reference_dir / "fixtures" / "tiny_clip" / "weights.safetensors")))
    ckpt = tmp_path / "other_clip.ckpt"
    torch.save({"state_dict": sd}, ckpt)
    out = tmp_path / "ctx.safetensors"
    rc = main(["context", "--config", str(d / "config.yaml"), "--checkpoint", str(ckpt), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "do not fit the network's context" in err[0], err
    assert not out.exists()


def test_context_cli_rejects_an_out_that_is_not_safetensors(tmp_path, capsys):
    from geo4d_cli import main

    rc = main(["context", "--config", "c.yaml", "--checkpoint", "m.ckpt", "--out", str(tmp_path / "ctx.pt")])
    assert rc == 2 and "expected a .safetensors path" in capsys.readouterr().err


def test_read_context_file_round_trip(tmp_path):
    from safetensors import safe_open

    from geo4d_model.context import read_context_file, write_context_file

    ctx = torch.randn(1, 81, 64, generator=torch.Generator().manual_seed(1))
    path = write_context_file(tmp_path / "a" / "ctx.safetensors", ctx.to(torch.bfloat16), "fp-1")
    assert path == tmp_path / "a" / "ctx.safetensors"
    back = read_context_file(path, context_dim=64)
    assert back.dtype == torch.float32 and torch.equal(back, ctx.to(torch.bfloat16).float())
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["checkpoint_fingerprint"] == "fp-1"
    write_context_file(path, ctx)  # replaces an existing file
    assert torch.equal(read_context_file(path), ctx)
    assert [p.name for p in path.parent.iterdir()] == ["ctx.safetensors"]
    with pytest.raises(ValueError, match=r"\(1, L, C\)"):
        write_context_file(tmp_path / "b.safetensors", torch.zeros(81, 64))


def _bad_context_files(tmp_path):
    """name → (path, substring the error must contain)."""
    from safetensors.torch import save_file

    from geo4d_model.context import write_context_file

    good = write_context_file(tmp_path / "good.safetensors", torch.ones(1, 10, 64))
    write_context_file(tmp_path / "c8.safetensors", torch.ones(1, 10, 8))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file" * 10)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-40])
    save_file({"ctx": torch.ones(1, 10, 64), "other": torch.ones(2)}, str(tmp_path / "nokey.safetensors"))
    save_file({"context": torch.ones(10, 64)}, str(tmp_path / "rank.safetensors"))
    save_file({"context": torch.ones(2, 10, 64)}, str(tmp_path / "batch.safetensors"))
    save_file({"context": torch.ones(1, 10, 64, dtype=torch.int64)}, str(tmp_path / "int.safetensors"))
    save_file({"context": torch.full((1, 10, 64), float("nan"))}, str(tmp_path / "nan.safetensors"))
    return {
        "missing": (tmp_path / "absent.safetensors", "context file not found"),
        "directory": (tmp_path, "is a directory"),
        "not safetensors": (garbage, "not a readable safetensors file"),
        "truncated": (truncated, "not a readable safetensors file"),
        "no context key": (tmp_path / "nokey.safetensors", "no 'context' tensor in the file (it has: ctx, other)"),
        "wrong rank": (tmp_path / "rank.safetensors", "must have shape (1, L, C), got (10, 64)"),
        "wrong batch": (tmp_path / "batch.safetensors", "must have shape (1, L, C), got (2, 10, 64)"),
        "wrong dim": (tmp_path / "c8.safetensors",
                      "context dimension C: expected 64 (the network's context_dim), got 8"),
        "integer": (tmp_path / "int.safetensors", "must be a floating-point tensor"),
        "nan": (tmp_path / "nan.safetensors", "NaN or infinite"),
    }


BAD = ["missing", "directory", "not safetensors", "truncated", "no context key", "wrong rank", "wrong batch",
       "wrong dim", "integer", "nan"]


@pytest.mark.parametrize("case", BAD)
def test_read_context_file_errors_name_the_file_and_the_problem(tmp_path, case):
    from geo4d.errors import InputError
    from geo4d_model.context import read_context_file

    path, expected = _bad_context_files(tmp_path)[case]
    with pytest.raises(InputError) as info:
        read_context_file(path, context_dim=64)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, message


def test_a_damaged_cache_entry_is_recomputed(reference_dir, tmp_path):
    from safetensors.torch import load_file

    from geo4d_model.context import cache_path, constant_context, read_context_file
    from geo4d_model.loader import load_official

    d = reference_dir / "fixtures" / "tiny"
    loaded = load_official(d / "config.yaml", d / "model.ckpt")
    cases = load_file(str(d / "cases.safetensors"))
    path = cache_path(loaded.fingerprint, tmp_path)
    path.write_bytes(b"damaged")
    ctx = constant_context(loaded, cache=tmp_path,
                           compute=lambda _: (cases["ddim.text_emb"], cases["ddim.image_tokens"]))
    assert torch.equal(read_context_file(path), ctx)
