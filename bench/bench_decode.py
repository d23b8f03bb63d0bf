"""Decode 6D: this project's decode vs the previous one (each half through the stock diffusers
``AutoencoderKLWan.decode``, one after the other), same tiny VAE, same latents, in one process,
interleaved. Prints the median times, their ratio, the share of decode in a tiny run's sampling
time, and the largest difference between the two results (they must agree to float32 rounding).

    python bench/bench_decode.py [--frames 49 --height 96 --width 144 --repeats 5]
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
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--height", type=int, default=96, help="per-modality height (tiny preset default)")
    ap.add_argument("--width", type=int, default=144, help="per-modality width (tiny preset default)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from einops import rearrange

    from fourd_core.pipelines.xyz_init import denormalize_xyz_latents
    from fourd_core.models.loading import ModelSpec
    from fourd_core.pipelines.assemble import load_pipeline
    from fourd_core.models.memory import MemoryConfig
    from fourd_core.pipelines.decode import decode_6d, vae_latent_stats

    torch.manual_seed(0)
    pipe, _ = load_pipeline(ModelSpec(base="tiny", fourdnex=None), MemoryConfig(device="cpu"))
    vae = pipe.vae
    t = (args.frames - 1) // 4 + 1
    z = torch.randn(1, 16, t, args.height // 8, 2 * args.width // 8)

    @torch.no_grad()
    def previous():  # the stock decode of each half, as before this change
        z_rgb, z_xyz = rearrange(z, "b c t h (m w) -> m b c t h w", m=2)
        mean, inv_std = vae_latent_stats(vae, z)
        outs = [vae.decode(zz / inv_std + mean, return_dict=False)[0].float().clamp(-1, 1)
                for zz in (z_rgb, denormalize_xyz_latents(z_xyz))]
        return [(rearrange(x[0], "c f h w -> f h w c") / 2 + 0.5) for x in outs]

    def ours():
        return decode_6d(pipe, z)

    times = {"previous": [], "ours": []}
    results = {}
    for _ in range(args.repeats + 1):  # first round is a warm-up
        for name, fn in (("previous", previous), ("ours", ours)):
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    diff = max(float((a - b).abs().max()) for a, b in zip(results["previous"], results["ours"]))
    print(f"tiny VAE decode, {args.frames} frames, 2 x {args.height}x{args.width}, {torch.get_num_threads()} threads")
    print(f"  previous (stock decode per half): {med['previous']:.2f} s   (runs: "
          + ", ".join(f"{x:.2f}" for x in times["previous"][1:]) + ")")
    print(f"  ours (halves batched, CPU norms): {med['ours']:.2f} s   (runs: "
          + ", ".join(f"{x:.2f}" for x in times["ours"][1:]) + ")")
    print(f"  ratio ours / previous: {med['ours'] / med['previous']:.2f}   max |difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
