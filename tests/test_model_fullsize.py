"""The full-size network (official yaml, random weights) runs one 16-frame window end to end on CPU.

Reduced resolution (64×64 frames → 8×8 latents) and bfloat16 weights keep it near 4 GB of RAM and
well under a minute on 2 cores (float32 would need ~7 GB and 13–21 s per U-Net call here).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.mark.slow
def test_full_size_window_end_to_end_cpu(reference_dir):
    from geo4d_model.loader import build_random
    from geo4d_model.predictor import Geo4DPredictor
    from geo4d_model.unet import frame_context

    t0 = time.perf_counter()
    net, pm = build_random(reference_dir / "official_inference_geo4d.yaml", dtype=torch.bfloat16)
    assert sum(p.numel() for p in net.unet.parameters()) > 1.3e9
    cfg = net.cfg
    V = cfg.unet.temporal_length
    L = 77 + cfg.resampler.num_queries * cfg.resampler.video_length
    assert (V, L) == (16, 333)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        tokens = torch.randn(1, 257, cfg.resampler.embedding_dim, generator=gen)
        context = net.context(torch.randn(1, 77, cfg.unet.context_dim, generator=gen), tokens.bfloat16())
    assert context.shape == (1, L, 1024)
    # 77 + 16·t tokens: each frame gets the text and its own 16 image tokens
    per_frame = frame_context(context.float(), V)
    assert per_frame.shape == (V, 77 + 16, 1024)
    assert torch.equal(per_frame[5, 77:], context[0, 77 + 5 * 16 : 77 + 6 * 16].float())

    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, size=(V, 64, 64, 3), dtype=np.uint8)
    pred = Geo4DPredictor(net, pm, context, image_size=(64, 64), autocast=None, vae_batch=16)
    (g, decoded), = list(pred.decoded_windows(video, [0], V))
    elapsed = time.perf_counter() - t0
    assert g == 0 and decoded.shape == (1, 11, V, 64, 64)
    assert torch.isfinite(decoded).all()
    assert float(decoded.std()) > 0
    print(f"full-size window (random weights, bf16, 64×64, 16 frames) end to end on CPU: {elapsed:.1f} s")
