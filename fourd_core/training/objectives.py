"""The three training objectives, each an ``nn.Module`` whose ``forward(batch, step)`` returns the loss, so
accelerate wraps it as it is (DDP reduces the gradients of the trainable parameters only; the frozen base
weights have ``requires_grad=False``).

Flow matching, the code's convention (the 4DNeX trainer; rectified flow as in Wan): for clean latents ``x``,
noise ``e`` and a noise level ``s`` in (0, 1], the input is ``x_s = (1 - s) x + s e`` at timestep ``1000 s``
and the model predicts the velocity ``e - x``; the loss is its mean squared error (:func:`velocity_loss`).
Noise levels: uniform over the 1000 levels ``{0.001, ..., 1}`` (the 4DNeX code: a FlowMatchEulerDiscrete
scheduler with shift 1) or logit-normal, optionally shifted ``s' = k s / (1 + (k - 1) s)``
(:func:`sample_sigmas`). The noise and the level of a sample depend only on the run's seed, the step and the
sample's name (:func:`sample_noise`), so a run split over processes draws what one process would.

* :class:`SyncObjective` (4Real-Video Sec. 3.2-3.3): the base DiT frozen, only the ``GridSync`` layers train;
  the two-stream forward exactly as the grid sampler runs it (:class:`~fourd_core.models.grid_streams.TwoStreamEngine`),
  with the known latent frames (row 0, column 0) given as the sampler gives them; the loss on the unknown
  latents and valid pixels.
* :class:`FusedObjective` (4Real-Video-V2): a LoRA on the DiT's attention under the sparse view-time mask
  (:class:`~fourd_core.models.grid_fused.FusedEngine`, per-view CLIP), the same grid loss.
* :class:`LoraObjective` (4DNeX Sec. 4): rank-64 / alpha-32 LoRA on attention q, k, v, out and the domain
  embeddings (float32) on the 4DNeX-patched DiT (shared RoPE); the width-fused ``[RGB | XYZ]`` target with
  the XYZ modality normalisation (in the cache), the 0.5 mask on the XYZ half, plain MSE over every element.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..errors import InputError

#: attention projections the LoRAs adapt (4DNeX: attn1 and attn2 q, k, v, out)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TRAIN_ADAPTER = "fourd_train"


def sample_sigmas(n: int, generator: torch.Generator, kind: str = "uniform", shift: float = 1.0) -> torch.Tensor:
    """``n`` flow-matching noise levels, float32 in (0, 1] (see the module docstring).

    Raises:
        InputError: an unknown ``kind``.
    """
    if kind == "uniform":
        s = torch.randint(1, 1001, (n,), generator=generator).float() / 1000.0
    elif kind == "logit_normal":
        s = torch.sigmoid(torch.randn(n, generator=generator))
    else:
        raise InputError(f"Unknown noise-level sampling {kind!r}: uniform or logit_normal.")
    if shift != 1.0:
        s = shift * s / (1 + (shift - 1) * s)
    return s.clamp(1e-3, 1.0)


def sample_noise(seed: int, step: int, name: str, shape, kind: str = "uniform",
                 shift: float = 1.0) -> tuple[torch.Tensor, float]:
    """``(noise [shape] float32, sigma)`` of one sample at one step: a generator seeded from the run's
    ``seed``, the ``step`` and the sample ``name`` (the same draw wherever the sample is processed)."""
    digest = hashlib.sha256(f"{seed}/{step}/{name}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    sigma = float(sample_sigmas(1, g, kind, shift)[0])
    return torch.randn(tuple(shape), generator=g), sigma


def noisy(x: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """``x_s = (1 - s) x + s e`` (rectified flow)."""
    return (1 - sigma) * x + sigma * noise


def velocity_loss(pred: torch.Tensor, x: torch.Tensor, noise: torch.Tensor,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of the predicted velocity against ``e - x`` (float32), over the elements where
    ``weight`` (broadcast to ``pred``) is 1 (all elements when None)."""
    err = (pred.float() - (noise.float() - x.float())) ** 2
    if weight is None:
        return err.mean()
    w = weight.float().expand_as(err)
    return (err * w).sum() / w.sum().clamp_min(1.0)


def _item(batch, field: str, i: int):
    value = getattr(batch, field)
    return None if value is None else value[i]


class _Objective(nn.Module):
    """Shared by the objectives: the frozen transformer, the run settings, the per-sample noise."""

    kind = "grid"

    def __init__(self, transformer, cfg):
        super().__init__()
        self.transformer = transformer.requires_grad_(False)
        self.cfg = cfg

    def draw(self, name: str, shape, step: int):
        return sample_noise(self.cfg.seed, step, name, shape, self.cfg.sigma_sampling, self.cfg.sigma_shift)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors only (what checkpoints and outputs store), by parameter name."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def forward(self, batch, step: int, noise=None) -> torch.Tensor:
        """The mean loss over the batch (``noise``: optional ``[(noise, sigma)]`` per item, e.g. for a fixed batch)."""
        names = batch.name if isinstance(batch.name, (list, tuple)) else [batch.name]
        losses = []
        for i, name in enumerate(names):
            shape = (self._clean(batch, i)).shape
            e, s = noise[i] if noise is not None else self.draw(str(name), shape, step)
            losses.append(self.sample_loss(batch, i, e.to(self._clean(batch, i)), s))
        return torch.stack(losses).mean()


class _GridObjective(_Objective):
    """The grid objectives (sync, fused): one V x T window per sample, known frames given, loss on the rest.
    They train on the stock Wan forward (the 4DNeX patches, if installed, switched off)."""

    def __init__(self, transformer, cfg):
        from ..models.patches import is_fourdnex_patched, set_fourdnex_enabled

        super().__init__(transformer, cfg)
        if is_fourdnex_patched(transformer):
            set_fourdnex_enabled(transformer, False)

    def _clean(self, batch, i):
        return batch.latents[i]

    def engine(self):
        raise NotImplementedError

    def sample_loss(self, batch, i: int, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """Velocity MSE of grid sample ``i`` on its unknown latent frames and valid pixels.

        The model input is what :func:`fourd_core.pipelines.grid.sample_window` gives the engine: ``[x_s | mask |
        condition]`` per row (known latent frames noised like the rest: the sampler's known-latent replacement
        sets them to ``(1 - s) x + s e`` with the window's own noise, which is ``x_s``), timestep ``1000 s``,
        the prompt for every row, CLIP per row and per column.
        """
        tr = self.transformer
        x = batch.latents[i].float()
        inp = torch.cat([noisy(x, noise, sigma), batch.mask[i].float(), batch.condition[i].float()], dim=1).to(tr.dtype)
        text = batch.text_embeds[i][None].to(tr.dtype)
        clip_rows = _item(batch, "clip_rows", i)
        engine = self.engine()
        engine.column_clip = None if batch.clip_cols is None else batch.clip_cols[i].to(tr.dtype)
        with engine.installed():
            pred = engine.predict(inp, torch.tensor([1000.0 * sigma], device=inp.device), text,
                                  None if clip_rows is None else clip_rows.to(tr.dtype))
        weight = (~batch.known[i].bool())[:, None, :, None, None].float() * batch.valid[i][:, None].float()
        return velocity_loss(pred, x, noise, weight)


class SyncObjective(_GridObjective):
    """4Real-Video sync layers on a frozen Wan DiT (see the module docstring).

    Args:
        transformer: the base ``WanTransformer3DModel`` (frozen here).
        cfg: :class:`~fourd_core.training.config.TrainConfig` (``sync_mode``, ``sync_rank``, ``seed``...).
        sync: layers to continue from (e.g. a checkpoint), else the paper's neutral initialisation.
    """

    def __init__(self, transformer, cfg, sync=None):
        from ..kernels.sync import GridSync

        super().__init__(transformer, cfg)
        torch.manual_seed(cfg.seed)
        self.sync = sync if sync is not None else GridSync.neutral(cfg.sync_mode, transformer,
                                                                    rank=cfg.sync_rank or None)
        self.sync.float().requires_grad_(True)

    def engine(self):
        from ..models.grid_streams import TwoStreamEngine

        return TwoStreamEngine(self.transformer, self.cfg.sync_mode, self.sync, checkpoint=self.cfg.gradient_checkpointing)


def add_train_lora(transformer, rank: int, alpha: float) -> None:
    """A trainable PEFT LoRA adapter (``fourd_train``) on attention q, k, v, out of every block (diffusers'
    ``add_adapter``); LoRA A random (Kaiming), B zero, so training starts from the base model."""
    from peft import LoraConfig

    transformer.add_adapter(LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=LORA_TARGETS,
                                       init_lora_weights=True), adapter_name=TRAIN_ADAPTER)
    for n, p in transformer.named_parameters():
        p.requires_grad_(".lora_" in n and TRAIN_ADAPTER in n)
        if p.requires_grad:
            p.data = p.data.float()


def lora_release_state(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trainable adapter tensors (``transformer.blocks.i.attn1.to_q.lora_A.fourd_train.weight``) in the 4DNeX
    release key layout (``transformer.blocks.i.attn1.to_q.lora_A.weight``)."""
    out = {}
    for k, v in named.items():
        if ".lora_" not in k:
            continue
        key = k.replace(f".{TRAIN_ADAPTER}.", ".")
        key = key[key.index("blocks."):]
        out["transformer." + key] = v
    return out


class FusedObjective(_GridObjective):
    """A LoRA on the DiT under 4Real-Video-V2's fused view-time attention (see the module docstring)."""

    def __init__(self, transformer, cfg):
        super().__init__(transformer, cfg)
        torch.manual_seed(cfg.seed)
        add_train_lora(self.transformer, cfg.lora_rank, cfg.lora_alpha)
        if cfg.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()

    def engine(self):
        from ..models.grid_fused import FusedEngine

        return FusedEngine(self.transformer, self.cfg.fused_backend)


class LoraObjective(_Objective):
    """4DNeX's LoRA and domain embeddings on the 4DNeX-patched Wan DiT (see the module docstring).

    Args:
        transformer: a diffusers Wan I2V DiT with the 4DNeX patches (:func:`fourd_core.models.patches.apply_fourdnex_patches`).
        cfg: :class:`~fourd_core.training.config.TrainConfig`. release: optional ``(lora state dict in the release
            layout, domain embeddings [2, D])`` to continue from.
    """

    kind = "fourdnex"

    def __init__(self, transformer, cfg, release=None):
        from ..models.patches import DOMAIN_EMBEDDING_KEY, is_fourdnex_patched, set_fourdnex_enabled

        if not is_fourdnex_patched(transformer):
            raise InputError("The lora objective needs the 4DNeX-patched transformer (apply_fourdnex_patches).")
        super().__init__(transformer, cfg)
        torch.manual_seed(cfg.seed)
        set_fourdnex_enabled(transformer, True)
        add_train_lora(transformer, cfg.lora_rank, cfg.lora_alpha)
        emb = getattr(transformer, DOMAIN_EMBEDDING_KEY)
        emb.data = emb.data.float()                        # trained in float32 (the official code: dtype of the model)
        emb.requires_grad_(True)
        if release is not None:
            self._load_release(*release)
        if cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()

    def _load_release(self, lora: dict, embeddings: torch.Tensor) -> None:
        from ..models.lora import FOURDNEX_LORA_SCALE
        from ..models.patches import DOMAIN_EMBEDDING_KEY

        ranks = {v.shape[0] for k, v in lora.items() if k.endswith("lora_A.weight")}
        if ranks != {self.cfg.lora_rank}:
            raise InputError(f"The release to continue has LoRA rank {sorted(ranks)}; set --lora-rank to match.")
        scale = (self.cfg.lora_alpha / self.cfg.lora_rank) / FOURDNEX_LORA_SCALE
        params = dict(self.transformer.named_parameters())
        for key, value in lora.items():
            name = key.removeprefix("transformer.").replace(".lora_A.", f".lora_A.{TRAIN_ADAPTER}.")
            name = name.replace(".lora_B.", f".lora_B.{TRAIN_ADAPTER}.")
            if name not in params:
                raise InputError(f"The release's LoRA tensor {key} has no place in this model (another base model?).")
            params[name].data.copy_(value.float() / (scale if ".lora_B." in name else 1.0))
        getattr(self.transformer, DOMAIN_EMBEDDING_KEY).data.copy_(embeddings.float())

    def _clean(self, batch, i):
        return batch.target[i]

    def sample_loss(self, batch, i: int, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """Velocity MSE of 4DNeX sample ``i`` over both halves (the official trainer's plain MSE): input
        ``[x_s | mask | condition]`` of the width-fused latents, timestep ``1000 s``, the suffixed prompt's
        text embedding and the RGB image's CLIP features."""
        tr = self.transformer
        x = batch.target[i].float()
        inp = torch.cat([noisy(x, noise, sigma), batch.mask[i].float(), batch.condition[i].float()], dim=0)[None]
        clip = _item(batch, "clip", i)
        pred = tr(hidden_states=inp.to(tr.dtype), timestep=torch.tensor([1000.0 * sigma], device=inp.device),
                  encoder_hidden_states=batch.text_embeds[i][None].to(tr.dtype),
                  encoder_hidden_states_image=None if clip is None else clip[None].to(tr.dtype), return_dict=False)[0]
        return velocity_loss(pred[0], x, noise)


OBJECTIVES = {"sync": SyncObjective, "fused": FusedObjective, "lora": LoraObjective}

