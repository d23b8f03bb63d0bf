"""Per-step cost of the 4DNeX sampling path vs diffusers' stock WanImageToVideoPipeline.

Same tiny random Wan2.1-I2V model (same weights), same latent size (the stock pipeline samples a
``2w``-wide video, 4DNeX two ``w``-wide halves), same steps and guidance, in one process, runs
interleaved. Prints the per-step times and their ratio (target: 4DNeX / stock <= 1.10).

    python bench/bench_fourdnex_overhead.py [--height 256 --width 384 --frames 49 --steps 6 --repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=256, help="per-modality height")
    ap.add_argument("--width", type=int, default=384, help="per-modality width (stock runs 2x this)")
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    from diffusers import WanImageToVideoPipeline

    from fourd_core.io.images import prepare_image
    from fourd_core.models.loading import ModelSpec
    from fourd_core.pipelines.assemble import load_pipeline
    from fourd_core.models.memory import MemoryConfig
    from fourd_core.pipelines.fourdnex import SamplingConfig, encode_conditions, generate_latents, to_pil

    torch.manual_seed(0)
    pipe, _ = load_pipeline(ModelSpec(base="tiny", dtype="float32"), MemoryConfig(device=args.device))
    stock = WanImageToVideoPipeline(**{k: v for k, v in pipe.components.items()})
    stock.set_progress_bar_config(disable=True)
    image = torch.rand(args.height, args.width, 3)
    image = prepare_image(image, args.height, args.width)
    cfg = SamplingConfig(num_frames=args.frames, height=args.height, width=args.width, steps=args.steps)
    conds = encode_conditions(pipe, image, "a scene", cfg)
    wide = to_pil(torch.cat([image, image], dim=1))

    def per_step(fn) -> float:
        stamps = []

        def cb(*a, **k):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            return {}

        fn(cb)
        d = [b - a for a, b in zip(stamps[:-1], stamps[1:])]  # excludes the first (warm-up) step
        return statistics.median(d)

    def run_fourdnex(cb):
        generate_latents(pipe, image, "a scene", cfg, conditions=conds, callback=lambda s, t, l: cb())

    def run_stock(cb):
        from fourd_core.models.patches import set_fourdnex_enabled

        set_fourdnex_enabled(pipe.transformer, False)  # the stock Wan forward, bit for bit
        try:
            stock(image=wide, prompt_embeds=conds["prompt_embeds"], negative_prompt_embeds=conds["negative_prompt_embeds"],
                  image_embeds=None, height=args.height, width=2 * args.width, num_frames=args.frames,
                  num_inference_steps=args.steps, guidance_scale=cfg.guidance_scale, output_type="latent",
                  callback_on_step_end=lambda p, i, t, kw: cb())
        finally:
            set_fourdnex_enabled(pipe.transformer, True)

    tokens = ((args.frames - 1) // 4 + 1) * (args.height // 16) * (2 * args.width // 16)
    print(f"tiny Wan2.1-I2V, {args.device}, latent tokens per forward: {tokens}, steps {args.steps}, cfg {cfg.guidance_scale}")
    per_step(run_stock), per_step(run_fourdnex)  # warm-up (allocator, caches), not counted
    s_times, f_times = [], []
    for r in range(args.repeats):
        s_times.append(per_step(run_stock))
        f_times.append(per_step(run_fourdnex))
        print(f"  repeat {r}: stock {s_times[-1] * 1e3:8.1f} ms/step   4DNeX {f_times[-1] * 1e3:8.1f} ms/step")
    s, f = statistics.median(s_times), statistics.median(f_times)
    print(f"median per step: stock {s * 1e3:.1f} ms, 4DNeX {f * 1e3:.1f} ms")
    print(f"ratio 4DNeX/stock = {f / s:.3f}  (target <= 1.10: {'OK' if f / s <= 1.10 else 'OVER'})")


if __name__ == "__main__":
    main()
