"""Per-step cost of the 4D grid modes on the tiny random Wan2.1-I2V DiT, vs the row stream alone.

One denoising step = the conditional and the unconditional DiT pass (text CFG), on random latents
of a ``V x T_lat`` token grid (``T_lat`` latent frames = ``4 (T_lat - 1) + 1`` pixel frames), no
VAE. Every mode runs on the same model in the same process, interleaved, median of ``--repeats``;
ratios are against ``rows`` (each view denoised on its own = the row stream only) at the same
grid size.

Modes: rows; hard (averaging, Eq. 12); hard+w (sigma-modulated per-channel weights, Eq. 8);
soft_avg (supp. Eq. 13); soft+w (full-rank ModLinear, Eqs. 9-10); sequential (Eq. 5); fused
(V2 view-time attention) with the gathered-keys path (sparse cost) and the dense-mask path (L^2);
``--flex`` adds torch flex attention (compiled on CUDA).

    python bench/bench_grid.py [--height 64 --width 96 --repeats 5 --threads 1 --flex]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ["rows", "hard", "hard+w", "soft_avg", "soft+w", "sequential", "fused/gather", "fused/dense"]


def make_engines(tr, flex):
    from fourd_core.models.sync import GridSync
    from fourd_core.pipelines.grid import make_engine

    def weighted(mode):
        sync = GridSync.neutral(mode, tr)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in sync.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
        return sync

    return {
        "rows": make_engine(tr, "rows"),
        "hard": make_engine(tr, "hard"),
        "hard+w": make_engine(tr, "hard", sync=weighted("hard")),
        "soft_avg": make_engine(tr, "soft_avg"),
        "soft+w": make_engine(tr, "soft", sync=weighted("soft")),
        "sequential": make_engine(tr, "sequential"),
        "fused/gather": make_engine(tr, "fused", fused_backend="gather"),
        "fused/dense": make_engine(tr, "fused", fused_backend="dense"),
        **({"fused/flex": make_engine(tr, "fused", fused_backend="flex")} if flex else {}),
    }


def step_time(engine, x, t, text, neg, clip, col_clip) -> float:
    engine.column_clip = col_clip
    with torch.no_grad(), engine.installed():
        start = time.perf_counter()
        engine.predict(x, t, text, clip, "cond")
        engine.predict(x, t, neg, clip, "uncond")
        return time.perf_counter() - start


def measure(tr, engines, views, times, h, w, repeats, device):
    g = torch.Generator().manual_seed(views * 100 + times)
    x = torch.randn(views, 36, times, h, w, generator=g).to(device)
    t = torch.tensor([700.0], device=device)
    text = torch.randn(1, 512, tr.config.text_dim, generator=g).to(device)
    neg = torch.randn(1, 512, tr.config.text_dim, generator=g).to(device)
    n_img = 5 if tr.config.image_dim == 32 else 257
    clip = torch.randn(views, n_img, tr.config.image_dim, generator=g).to(device)
    col_clip = torch.randn(times, n_img, tr.config.image_dim, generator=g).to(device)
    for e in engines.values():  # warm-up (allocator, first-call costs)
        step_time(e, x, t, text, neg, clip, col_clip)
    samples = {m: [] for m in engines}
    for _ in range(repeats):
        for m, e in engines.items():
            samples[m].append(step_time(e, x, t, text, neg, clip, col_clip))
    return {m: statistics.median(s) for m, s in samples.items()}


def table(title, rows, key_name):
    print(f"\n{title}")
    head = f"{key_name:>10} | " + " | ".join(f"{m:>16}" for m in MODES)
    print(head)
    print("-" * len(head))
    for key, res in rows:
        base = res["rows"]
        cells = [f"{res[m] * 1e3:8.1f}ms x{res[m] / base:5.2f}" for m in MODES]
        print(f"{key:>10} | " + " | ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=64, help="pixel height (latent = /8, tokens = /16)")
    ap.add_argument("--width", type=int, default=96, help="pixel width")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = stable timings on a shared box)")
    ap.add_argument("--flex", action="store_true", help="also time fused flex attention (compiled on CUDA; eager "
                    "reference on CPU, which materialises all scores)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from fourd_core.models.tiny_preset import build_tiny_components

    tr = build_tiny_components()["transformer"].eval().to(args.device)
    engines = make_engines(tr, args.flex)
    if args.flex:
        MODES.append("fused/flex")
    h, w = args.height // 8, args.width // 8
    tokens = (h // 2) * (w // 2)
    print(f"tiny Wan2.1-I2V DiT ({len(tr.blocks)} blocks, width {tr.config.num_attention_heads * tr.config.attention_head_dim}), "
          f"{args.width}x{args.height} px -> {tokens} tokens/frame, device {args.device}, {args.threads} thread(s), "
          f"one step = cond + uncond pass, median of {args.repeats}")
    print("cells: time per step, and its ratio to 'rows' (row stream only) at the same grid size")

    main_res = measure(tr, engines, 8, 8, h, w, args.repeats, args.device)
    table("8 x 8 grid (8 views x 8 latent frames = 29 pixel frames)", [("8x8", main_res)], "V x T_lat")
    table("growth with V (T_lat = 8)",
          [(f"V={v}", measure(tr, engines, v, 8, h, w, args.repeats, args.device)) for v in (2, 4, 8, 16)], "grid")
    table("growth with T_lat (V = 8)",
          [(f"T_lat={t}", measure(tr, engines, 8, t, h, w, args.repeats, args.device)) for t in (2, 4, 8, 16)], "grid")


if __name__ == "__main__":
    main()
