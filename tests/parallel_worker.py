"""Run by ``torchrun`` from tests/test_parallel.py: one denoiser evaluation of the tiny 4DNeX
transformer, single-process reference vs ``--parallel`` split, on this rank. Writes
``OUT/rank<r>.json`` with the max error and the token count the first block saw.

    python -m torch.distributed.run --nproc-per-node 2 tests/parallel_worker.py ulysses=2 cpu OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parallel, device, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if device == "cpu":
        # test-only: diffusers' enable_parallelism picks `rank % torch.accelerator.device_count()`,
        # which divides by zero on a machine without accelerators; everything after it runs on gloo
        torch.accelerator.device_count = lambda: 1
    from diffusers import WanTransformer3DModel

    from fourd_core.distributed.runtime import ParallelSpec, enable_scene_parallel, init_distributed, sequence_length
    from fourd_core.models.patches import apply_fourdnex_patches
    from fourd_core.models.tiny_preset import TINY_TRANSFORMER

    torch.set_num_threads(1)
    ctx = init_distributed(device, ParallelSpec.parse(parallel))
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    # the tiny model with 64-wide heads (cuDNN attention, which ring picks on CUDA, needs head_dim % 8 == 0)
    config = dict(TINY_TRANSFORMER, attention_head_dim=64, added_kv_proj_dim=2 * 64)
    torch.manual_seed(0)
    model = WanTransformer3DModel(**config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    emb = torch.randn(2, config["num_attention_heads"] * config["attention_head_dim"],
                      generator=torch.Generator().manual_seed(5))
    apply_fourdnex_patches(model, emb)  # domain embeddings differ per half: a wrong split would show
    model = model.to(device=ctx.device, dtype=dtype).eval()

    frames, height, width = 9, 32, 48  # 3 latent frames x 2 x 12/2 tokens = 36
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 36, 3, height // 8, 2 * width // 8, generator=g)
    t = torch.tensor([700.0])
    text = torch.randn(1, 12, config["text_dim"], generator=g)
    img = torch.randn(1, 5, config["image_dim"], generator=g)

    def forward(m, dev):
        with torch.no_grad():
            return m(x.to(dev, dtype), t.to(dev), text.to(dev, dtype), encoder_hidden_states_image=img.to(dev, dtype),
                     return_dict=False)[0].float().cpu()

    reference = forward(model, ctx.device)
    seen = []
    model.blocks[0].norm1.register_forward_pre_hook(lambda mod, a: seen.append(a[0].shape[1]))
    enable_scene_parallel(model, ctx, sequence_length(model, frames, height, width))
    split = forward(model, ctx.device)
    err = (split - reference).abs().max().item() / reference.abs().max().item()
    (out / f"rank{ctx.rank}.json").write_text(json.dumps({"rel_err": err, "tokens_seen": seen[-1],
                                                          "tokens": sequence_length(model, frames, height, width),
                                                          "shape": list(split.shape)}))
    ctx.close()


if __name__ == "__main__":
    main()
