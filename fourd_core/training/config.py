"""The settings of a training run, written once (:func:`fourd_core.settings.setting`): the CLI's
``train`` options, the run's checks and the configuration a checkpoint records (a resume whose
configuration differs is refused with the differing keys)."""

from __future__ import annotations

import dataclasses

from ..errors import InputError
from ..settings import setting, validate

OBJECTIVES = ("sync", "fused", "lora")
SIGMA_SAMPLING = ("uniform", "logit_normal")
MIXED_PRECISION = ("no", "bf16", "fp16")
#: settings that may change when a run resumes (where it writes and how often, not what it learns)
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "keep_checkpoints", "validate_every", "log_every", "out",
                     "tracker", "preview_steps")
#: settings an objective does not read (ignored when a resume compares configurations)
UNUSED = {"sync": ("lora_rank", "lora_alpha", "init_release", "fused_backend"),
          "fused": ("sync_mode", "sync_rank", "init_release"),
          "lora": ("sync_mode", "sync_rank", "fused_backend")}


@dataclasses.dataclass
class TrainConfig:
    """One training run (see :mod:`fourd_core.training`)."""

    objective: str = setting("sync", help="what to train", choices=OBJECTIVES)
    cache: str = setting("", help="latent cache folder made by `train prepare`")
    out: str = setting("", help="run folder: checkpoints/, logs and the final weights")
    base: str = setting("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", help="base Wan2.1-I2V model (frozen): a hub id, a "
                        "diffusers folder, or 'tiny' (the random toy model, for a laptop check); the one the cache "
                        "was made with")
    dtype: str = setting("float32", help="dtype of the frozen base weights", choices=("float32", "bfloat16", "float16"))
    # what is trained
    sync_mode: str = setting("soft", help="sync: hard (Eq. 8) or soft (Eqs. 9-10) sync layers", choices=("hard", "soft"))
    sync_rank: int = setting(0, help="sync: rank of the soft layers' linear map (0 = full rank)", low=0, integer=True)
    lora_rank: int = setting(64, help="lora / fused: LoRA rank (4DNeX: 64)", low=1, high=4096, integer=True)
    lora_alpha: float = setting(32.0, help="lora / fused: LoRA alpha (4DNeX: 32; scale = alpha / rank)", low=1e-6)
    init_release: str = setting("", help="lora: start from this 4DNeX release (folder / LoRA file) instead of zero")
    fused_backend: str = setting("auto", help="fused: attention backend", choices=("auto", "flex", "dense", "gather"))
    # optimisation
    steps: int = setting(1000, help="optimiser steps", low=1, integer=True)
    batch_size: int = setting(1, help="samples per process per step", low=1, integer=True)
    grad_accum: int = setting(1, help="gradient accumulation steps", low=1, integer=True)
    lr: float = setting(1e-4, help="AdamW learning rate (4DNeX LoRA: 2e-5)", low=0.0, high=1.0)
    weight_decay: float = setting(1e-4, help="AdamW weight decay", low=0.0)
    betas: tuple = (0.9, 0.999)
    warmup: int = setting(100, help="linear warm-up steps", low=0, integer=True)
    schedule: str = setting("cosine", help="learning-rate decay after the warm-up",
                            choices=("constant", "linear", "cosine"))
    max_grad_norm: float = setting(1.0, help="gradient clipping (0 = off)", low=0.0)
    mixed_precision: str = setting("no", help="accelerate mixed precision", choices=MIXED_PRECISION)
    gradient_checkpointing: bool = setting(False, help="recompute blocks in the backward pass (less memory)")
    seed: int = setting(42, help="seed of the noise, the sigmas, the data order and the initialisation", low=0,
                        integer=True)
    sigma_sampling: str = setting("uniform", help="flow-matching noise levels: uniform (the 4DNeX code) or "
                                  "logit-normal", choices=SIGMA_SAMPLING)
    sigma_shift: float = setting(1.0, help="shift applied to the sampled noise levels (1 = none)", low=1e-6)
    # bookkeeping
    validation_fraction: float = setting(0.1, help="share of the cached samples held out for validation", low=0.0,
                                         high=0.9)
    validate_every: int = setting(100, help="steps between validations (0 = only at the end)", low=0, integer=True)
    preview_steps: int = setting(4, help="sampling steps of the validation preview (0 = no preview)", low=0,
                                 integer=True)
    checkpoint_every: int = setting(250, help="steps between checkpoints", low=1, integer=True)
    keep_checkpoints: int = setting(2, help="checkpoints kept", low=1, integer=True)
    log_every: int = setting(10, help="steps between log lines", low=1, integer=True)
    tracker: str = setting("jsonl", help="metrics log: jsonl (always available) or tensorboard (when installed)",
                           choices=("jsonl", "tensorboard"))

    def check(self) -> None:
        """Every setting's rule and the combinations.

        Raises:
            InputError: a bad value or combination (names the fix).
        """
        validate(self)
        if not self.cache:
            raise InputError("Give the latent cache folder with --cache (made by `python -m fourd_core train prepare`).")
        if not self.out:
            raise InputError("Give the run folder with --out.")
        if self.init_release and self.objective != "lora":
            raise InputError("--init-release continues the 4DNeX LoRA; it goes with the lora objective only.")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(d["betas"])
        return d

    def differences(self, saved: dict) -> list[str]:
        """Keys whose value differs from a checkpoint's saved configuration (those a resume may change and those
        this objective does not read excluded)."""
        mine = self.to_json()
        skip = set(RESUMABLE_CHANGES) | set(UNUSED.get(self.objective, ()))
        return sorted(k for k in set(mine) | set(saved) if k not in skip and mine.get(k) != saved.get(k))
