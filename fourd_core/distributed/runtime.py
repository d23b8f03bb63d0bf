"""Process group, ``--parallel`` spec, device mesh and context parallelism for one scene.

Rank layout (``torchrun --nproc-per-node N``): ``N = dp * cfg * ring * ulysses`` with the mesh
``(dp, cfg, ring, ulysses)`` in row-major order, so the ranks that split one sequence
(ring x ulysses) are neighbours (same node, fastest links), the two CFG branches next, and
``dp`` (data parallel: different images) outermost. ``dp`` is whatever is left of the world.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re

import torch

from ..errors import InputError, brief

#: default collective timeout: batch ranks wait for each other at the end, possibly for hours
DEFAULT_TIMEOUT_S = 48 * 3600


@dataclasses.dataclass(frozen=True)
class ParallelSpec:
    """How one scene is split: ``cfg`` (2: conditional / unconditional pass on two ranks),
    ``ring`` and ``ulysses`` (diffusers context-parallel degrees over the token sequence).

    Parse it from the CLI form with :meth:`parse`; ``size`` ranks work on one scene together.
    """

    cfg: int = 1
    ring: int = 1
    ulysses: int = 1

    @classmethod
    def parse(cls, text: str | None) -> "ParallelSpec":
        """``"ulysses=4,ring=2,cfg=2"`` (any order, any subset; ``""``/None: no splitting).

        Raises:
            InputError: unknown key, a value that is not a positive integer, or ``cfg`` not 1 or 2.
        """
        values = {}
        for part in filter(None, (p.strip() for p in (text or "").split(","))):
            m = re.fullmatch(r"(cfg|ring|ulysses)\s*=\s*(\d+)", part)
            if not m or int(m.group(2)) < 1:
                raise InputError(f"--parallel: cannot read {part!r}; write e.g. 'ulysses=2', 'ring=2,cfg=2' "
                                 "(keys cfg, ring, ulysses; positive integers).")
            values[m.group(1)] = int(m.group(2))
        spec = cls(**values)
        if spec.cfg not in (1, 2):
            raise InputError(f"--parallel cfg={spec.cfg}: CFG has two passes, so cfg is 1 or 2.")
        return spec

    @property
    def size(self) -> int:
        """Ranks per scene: ``cfg * ring * ulysses``."""
        return self.cfg * self.ring * self.ulysses

    @property
    def context_parallel(self) -> bool:
        return self.ring * self.ulysses > 1

    def __str__(self) -> str:
        return ",".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items() if v > 1) or "none"


@dataclasses.dataclass
class DistContext:
    """This process' place in the job. ``group`` indexes the scene group (data-parallel rank),
    ``group_rank`` the rank inside it; the group's rank 0 (``is_writer``) writes the outputs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    spec: ParallelSpec = dataclasses.field(default_factory=ParallelSpec)
    mesh: object = None
    owns_process_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def groups(self) -> int:
        return self.world_size // self.spec.size

    @property
    def group(self) -> int:
        return self.rank // self.spec.size

    @property
    def group_rank(self) -> int:
        return self.rank % self.spec.size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_writer(self) -> bool:
        return self.group_rank == 0

    def log(self, message: str) -> None:
        import sys

        prefix = f"[fourd rank {self.rank}/{self.world_size}]" if self.distributed else "[fourd]"
        print(f"{prefix} {message}", file=sys.stderr, flush=True)

    # ---- torch.distributed's collectives on the gloo (CPU) side of the process group ----
    def broadcast_object(self, obj):
        """``obj`` of rank 0 on every rank (``torch.distributed.broadcast_object_list``)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self._cpu_group())
        return box[0]

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self._cpu_group())
        return out

    def barrier(self) -> None:
        """Wait for every rank (``torch.distributed.barrier`` on the gloo side)."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=self._cpu_group())

    def _cpu_group(self):
        import torch.distributed as dist

        if self.device.type == "cpu":
            return None
        if not hasattr(self, "_gloo"):
            self._gloo = dist.new_group(backend="gloo", timeout=_timeout())
        return self._gloo

    def close(self, wait: bool = True) -> None:
        """Destroy the process group if :func:`init_distributed` created it.

        With ``wait`` (the normal end of a run) every rank first meets at a barrier: a rank that tears down
        its gloo pairs while another still sends makes the other abort (``terminate called without an
        active exception``). Pass ``wait=False`` on an error path, where the other ranks may never arrive
        (torchrun stops them once this rank exits); a failed barrier destroys the group all the same.
        """
        if self.owns_process_group:
            import torch.distributed as dist

            if dist.is_initialized():
                if wait:
                    try:
                        self.barrier()
                    except Exception:  # noqa: BLE001 - a dead peer; destroy the group anyway
                        pass
                dist.destroy_process_group()
            self.owns_process_group = False


def _timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get("FOURD_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)))


def init_distributed(device: str | None = None, spec: ParallelSpec | None = None) -> DistContext:
    """Join the ``torchrun`` job described by ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (one process
    without them) and build the device mesh for ``spec``.

    Device: ``device`` if given (``"cuda"`` means ``cuda:LOCAL_RANK``), else ``cuda:LOCAL_RANK``
    when CUDA is available, else the CPU. Backend: NCCL on CUDA, gloo on the CPU; object
    collectives always go through a gloo group (no GPU memory, no NCCL watchdog while ranks wait
    for each other at the end of a batch). Timeout: ``$FOURD_DIST_TIMEOUT_S`` (default 48 h).

    Raises:
        InputError: the world size is not a multiple of ``spec.size``; context parallelism without
            an accelerator (diffusers picks ``rank % torch.accelerator.device_count()``); more
            ranks per node than GPUs.
    """
    spec = spec or ParallelSpec()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if spec.context_parallel and torch.accelerator.device_count() == 0:
        raise InputError(f"--parallel {spec}: diffusers' context parallelism places rank r on accelerator "
                         "r % device_count, and this machine has none. Use GPUs, or on the CPU only cfg=2 "
                         "(or a batch over images).")
    if world % spec.size:
        raise InputError(f"--parallel {spec} needs a multiple of {spec.size} processes, but torchrun started {world}: "
                         f"use --nproc-per-node {spec.size} (or {2 * spec.size}, ...).")
    if device in (None, "cuda"):
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: torch sees no GPU; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"rank {rank} wants {dev} but this node has {torch.cuda.device_count()} GPUs: "
                             "start at most that many processes per node.")
        torch.cuda.set_device(dev)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, spec=spec)
    if world == 1:
        return ctx
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=_timeout())
        ctx.owns_process_group = True
    if spec.size > 1:
        from torch.distributed.device_mesh import init_device_mesh

        ctx.mesh = init_device_mesh(dev.type, (ctx.groups, spec.cfg, spec.ring, spec.ulysses),
                                    mesh_dim_names=("dp", "cfg", "ring", "ulysses"))
    return ctx


def sequence_length(transformer, num_frames: int, height: int, width: int) -> int:
    """Tokens of one 4DNeX forward: latent frames x (H / 8 / p_h) x (2 W / 8 / p_w)
    (480x720, 49 frames: 13 x 30 x 90 = 35,100)."""
    p_t, p_h, p_w = transformer.config.patch_size
    frames = (num_frames - 1) // 4 + 1
    return (frames // p_t) * (height // 8 // p_h) * (2 * (width // 8) // p_w)


def enable_scene_parallel(transformer, ctx: DistContext, tokens: int | None = None) -> None:
    """Split one scene over ``ctx.spec``: 4DNeX patches, then context parallelism, then CFG-parallel.

    The order is what makes the 4DNeX patches correct under a sequence split: the Wan ``_cp_plan``
    splits the *output* of the module named ``rope`` and the *input* of ``blocks.0``. The shared
    RoPE wrapper is installed as ``transformer.rope`` before the split hooks, so they see the
    duplicated full-width positions and cut them exactly like the tokens; the domain embeddings
    are added by a hook on ``patch_embedding``, which runs on the whole token grid before
    ``blocks.0``. ``ulysses_anything`` / ``ring_anything`` are switched on when ``tokens`` does not
    divide by the degree (4DNeX at 480x720: 35,100 tokens over 8 ranks) or is unknown (None).

    Source: diffusers ``ModelMixin.enable_parallelism`` and ``WanTransformer3DModel._cp_plan``
    (diffusers 0.42).

    Raises:
        InputError: ring and ulysses both > 1 with a sequence that does not divide by their product,
            or an attention backend without context-parallel support (diffusers' message).
    """
    from ..models.patches import apply_fourdnex_patches
    from .cfg_parallel import enable_cfg_parallel

    spec = ctx.spec
    apply_fourdnex_patches(transformer)  # idempotent; must precede the split hooks (see above)
    if spec.context_parallel:
        from diffusers import ContextParallelConfig

        degree = spec.ring * spec.ulysses
        hybrid = spec.ring > 1 and spec.ulysses > 1
        if tokens is not None and tokens % degree and hybrid:
            raise InputError(f"{tokens} tokens do not divide by ring*ulysses = {degree}; diffusers' uneven "
                             f"split works with ring or ulysses alone: use ulysses={degree} or ring={degree}.")
        # unknown length (sizes vary per image): the uneven-capable split wherever diffusers has one
        uneven = (tokens % degree != 0) if tokens is not None else not hybrid
        config = ContextParallelConfig(ring_degree=spec.ring, ulysses_degree=spec.ulysses, mesh=ctx.mesh,
                                       ulysses_anything=uneven and spec.ulysses > 1,
                                       ring_anything=uneven and spec.ring > 1)
        if spec.ring > 1:
            _ring_attention_backend(transformer, ctx)
        if getattr(transformer, "_parallel_config", None) is None:
            try:
                transformer.enable_parallelism(config=config)
            except ValueError as exc:
                raise InputError(f"--parallel {spec}: {brief(exc)}") from exc
    if spec.cfg > 1:
        enable_cfg_parallel(transformer, ctx.mesh["cfg"].get_group())


def attention_backend_of(transformer) -> str | None:
    """The diffusers attention backend set on the model's attention processors (None: the default, SDPA)."""
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            backend = processor._attention_backend
            return None if backend is None else str(getattr(backend, "value", backend))
    return None


def _ring_attention_backend(transformer, ctx: DistContext) -> None:
    """Ring attention merges per-chunk results by their log-sum-exp, which diffusers' default
    ``native`` (SDPA) backend does not return ("Native attention does not support return_lse=True").
    With no backend chosen, take cuDNN attention (bf16/fp16) on CUDA; otherwise say what to choose."""
    from ..models.memory import ring_attention_backends

    backend = attention_backend_of(transformer)
    if backend in ring_attention_backends():
        return
    if backend in (None, "native") and ctx.device.type == "cuda":
        transformer.set_attention_backend("_native_cudnn")
        ctx.log("ring attention: using the _native_cudnn attention backend (returns the log-sum-exp ring needs)")
        return
    raise InputError(f"--parallel {ctx.spec}: ring attention needs an attention backend that returns the log-sum-exp "
                     f"({', '.join(ring_attention_backends())}); the current one is {backend or 'native'} on {ctx.device.type}. "
                     "Choose one with --attention, or use ulysses instead of ring.")
