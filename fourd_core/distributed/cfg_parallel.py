"""CFG-parallel: the conditional and the unconditional pass of each step on two ranks.

diffusers' ``WanImageToVideoPipeline`` calls the transformer twice per step, inside
``transformer.cache_context("cond")`` and then ``cache_context("uncond")``, with the *same*
``hidden_states`` tensor, and combines ``uncond + g * (cond - uncond)`` only after the second
call. :class:`CFGParallelHook` is a diffusers ``ModelHook`` on the transformer that reads that
context (like diffusers' cache hooks do) and:

* in the ``cond`` call, CFG rank 0 runs the conditional pass; CFG rank 1 returns an empty buffer
  at once (nothing reads it before the ``uncond`` call) and moves on to the ``uncond`` call;
* in the ``uncond`` call, CFG rank 1 runs the unconditional pass; both ranks then exchange their
  results with ``torch.distributed.all_gather`` and rank 1 fills the buffer it handed out.

So both passes run at the same time on two ranks, each with exactly the arguments the stock loop
gives it, and every rank ends the step with the same ``noise_pred``: the stock loop, scheduler and
callbacks stay untouched. Needs ``guidance_scale > 1`` (otherwise there is no second pass).
Caching hooks keyed by the context name (first-block cache, ...) would see rank 1's unconditional
work under "uncond" only, as they should, but rank 0 never runs "uncond": do not combine them.
"""

from __future__ import annotations

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

HOOK_NAME = "fourd_cfg_parallel"


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class CFGParallelHook(ModelHook):
    """See the module docstring. ``group``: the two-rank process group of one CFG pair."""

    _is_stateful = True  # so diffusers' cache_context() hands us the call's name

    def __init__(self, group):
        super().__init__()
        import torch.distributed as dist

        if dist.get_world_size(group) != 2:
            raise ValueError("CFG-parallel needs a process group of exactly two ranks.")
        self.group = group
        self.cfg_rank = dist.get_rank(group)
        self.state = StateManager(_NoState)
        self._pending = None  # (hidden_states of the step, tensor this rank holds for the cond pass)

    def reset_state(self, module):
        self.state.reset()
        self._pending = None
        return module

    def new_forward(self, module, *args, **kwargs):
        context = self.state._context
        name = None if context is None else context.name
        if name not in ("cond", "uncond"):
            return self.fn_ref.original_forward(*args, **kwargs)
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        return_dict = kwargs.get("return_dict", True)
        if name == "cond":
            if self._pending is not None:
                self._pending = None
                raise RuntimeError("CFG-parallel: a conditional pass without its unconditional pass; run with "
                                   "guidance_scale > 1 (or without cfg=2).")
            if self.cfg_rank == 0:
                out = self.fn_ref.original_forward(*args, **kwargs)
                self._pending = (hidden, _sample(out))
                return out
            channels = module.config.out_channels or module.config.in_channels
            buffer = torch.empty((hidden.shape[0], channels, *hidden.shape[2:]), dtype=hidden.dtype,
                                 device=hidden.device)
            self._pending = (hidden, buffer)
            return _wrap(buffer, return_dict)
        # "uncond"
        if self._pending is None or self._pending[0] is not hidden:
            self._pending = None
            raise RuntimeError("CFG-parallel: an unconditional pass that does not follow its conditional pass.")
        _, held = self._pending
        self._pending = None
        import torch.distributed as dist

        if self.cfg_rank == 1:
            out = self.fn_ref.original_forward(*args, **kwargs)
            mine = _sample(out)
        else:
            mine = held
        mine = mine.contiguous()
        gathered = [torch.empty_like(mine), torch.empty_like(mine)]
        dist.all_gather(gathered, mine, group=self.group)
        if self.cfg_rank == 1:
            held.copy_(gathered[0])  # the cond result the loop already holds a reference to
            return out
        return _wrap(gathered[1], return_dict)


def _sample(out) -> torch.Tensor:
    return out.sample if hasattr(out, "sample") else out[0]


def _wrap(sample: torch.Tensor, return_dict: bool):
    if return_dict:
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)
    return (sample,)


def enable_cfg_parallel(transformer, group) -> CFGParallelHook:
    """Register :class:`CFGParallelHook` on ``transformer`` (idempotent; outermost hook)."""
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    hook = registry.get_hook(HOOK_NAME)
    if hook is None:
        hook = CFGParallelHook(group)
        registry.register_hook(hook, HOOK_NAME)
    return hook
