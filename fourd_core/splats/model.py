"""The optimisable deformable Gaussians of :mod:`fourd_core.splats.fit` and 3DGS adaptive density control.

Density control follows the 3DGS reference (Kerbl et al. 2023, Sec. 5.2, ``densify_and_clone`` /
``densify_and_split`` / ``prune``): splats whose mean view-space positional gradient (NDC units) exceeds a
threshold are cloned when small (<= ``percent_dense`` x extent) or split in two when large (new means
sampled from the Gaussian, scales / 1.6); splats below ``prune_opacity`` are removed. Adam moments of new
splats start at zero; the per-frame and per-view offsets are copied with their splats.
"""

from __future__ import annotations

import math

import torch

from .config import FitConfig
from .gaussians import Gaussians
from .rasterize import quat_to_rotmat

__all__ = ["DeformableModel", "densify_and_prune"]


class DeformableModel:
    """Parameters + Adam state of the deformable Gaussians (canonical splats, ``time_offsets`` ``[T, N, 3]``,
    ``view_offsets`` ``[V - 1, N, 3]``), with the density-control edits."""

    def __init__(self, init: Gaussians, num_times: int, num_views: int, cfg: FitConfig, extent: float, device):
        n = len(init)
        scales = init.log_scales[:, :1].clone() if cfg.isotropic else init.log_scales.clone()
        self.params = {"means": init.means, "log_scales": scales, "quats": init.quats,
                       "logit_opacities": init.logit_opacities, "sh0": init.sh0}
        if num_times > 1:
            self.params["time_offsets"] = torch.zeros(num_times, n, 3)
        if num_views > 1:
            self.params["view_offsets"] = torch.zeros(num_views - 1, n, 3)
        self.params = {k: v.detach().to(device).float().clone().requires_grad_(True) for k, v in self.params.items()}
        self.isotropic = cfg.isotropic
        lrs = {"means": cfg.lr_means * extent, "log_scales": cfg.lr_scales, "quats": cfg.lr_quats,
               "logit_opacities": cfg.lr_opacity, "sh0": cfg.lr_sh0, "time_offsets": cfg.lr_offsets * extent,
               "view_offsets": cfg.lr_offsets * extent}
        self.opt = torch.optim.Adam([{"params": [p], "lr": lrs[k], "name": k} for k, p in self.params.items()],
                                    lr=0.0, eps=1e-15)

    def __len__(self):
        return int(self.params["means"].shape[0])

    @staticmethod
    def gdim(name: str) -> int:
        return 1 if name.endswith("offsets") else 0

    def scales(self) -> torch.Tensor:
        s = self.params["log_scales"]
        return (s.expand(-1, 3) if self.isotropic else s).exp()

    def frame_means(self, t: int, v: int) -> torch.Tensor:
        m = self.params["means"]
        if "time_offsets" in self.params:
            m = m + self.params["time_offsets"][t]
        if v > 0:
            m = m + self.params["view_offsets"][v - 1]
        return m

    def edit(self, keep: torch.Tensor, extra_idx: torch.Tensor, extra: dict[str, torch.Tensor] | None = None) -> None:
        """Keep the splats in ``keep`` and append copies of ``extra_idx`` (values overridden by ``extra``).
        Adam moments of appended splats start at zero (3DGS reference ``cat_tensors_to_optimizer``)."""
        extra = extra or {}
        for group in self.opt.param_groups:
            name = group["name"]
            old = group["params"][0]
            d = self.gdim(name)
            add = extra.get(name, old.detach().index_select(d, extra_idx))
            new = torch.cat([old.detach().index_select(d, keep.nonzero().flatten()), add], d).requires_grad_(True)
            state = self.opt.state.pop(old, None)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    s = state[key].index_select(d, keep.nonzero().flatten())
                    state[key] = torch.cat([s, torch.zeros_like(add)], d)
                self.opt.state[new] = state
            group["params"][0] = new
            self.params[name] = new

    def gaussians(self) -> Gaussians:
        p = {k: v.detach() for k, v in self.params.items()}
        ls = p["log_scales"].expand(-1, 3).contiguous() if self.isotropic else p["log_scales"]
        return Gaussians(p["means"], ls, p["quats"], p["logit_opacities"], p["sh0"])


def densify_and_prune(model: DeformableModel, accum, denom, cfg: FitConfig, extent: float, gen: torch.Generator):
    """Clone / split / prune (3DGS reference ``densify_and_prune``); returns fresh gradient accumulators."""
    p = model.params
    n = len(model)
    grads = torch.where(denom > 0, accum / denom.clamp_min(1), torch.zeros_like(accum))
    scales = model.scales().detach()
    big = scales.max(-1).values > cfg.percent_dense * extent
    hot = grads >= cfg.grad_threshold
    if n >= cfg.max_gaussians:
        hot = torch.zeros_like(hot)
    clone_idx = (hot & ~big).nonzero().flatten()
    split_idx = (hot & big).nonzero().flatten()
    keep = torch.sigmoid(p["logit_opacities"].detach()) >= cfg.prune_opacity
    keep[split_idx] = False
    extra_idx = torch.cat([clone_idx, split_idx, split_idx])
    extra = {}
    if len(split_idx):
        s = scales[split_idx].repeat(2, 1)
        noise = torch.randn(s.shape, generator=gen).to(s.device) * s
        rot = quat_to_rotmat(p["quats"].detach()[split_idx]).repeat(2, 1, 1)
        new_means = p["means"].detach()[split_idx].repeat(2, 1) + (rot @ noise[..., None])[..., 0]
        shrink = math.log(1.6)
        ls = p["log_scales"].detach()
        extra["means"] = torch.cat([p["means"].detach()[clone_idx], new_means])
        extra["log_scales"] = torch.cat([ls[clone_idx], ls[split_idx].repeat(2, 1) - shrink])
    model.edit(keep, extra_idx, extra)
    size = len(model)
    return torch.zeros(size, device=accum.device), torch.zeros(size, device=accum.device)
