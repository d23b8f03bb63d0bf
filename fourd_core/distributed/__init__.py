"""More than one process: torch.distributed (``torchrun``) for batches over images, diffusers'
context parallelism (Ulysses / ring) and CFG-parallel for one scene over several GPUs.

* :mod:`.runtime` - the process group from ``torchrun``'s environment, the ``--parallel`` spec,
  the device mesh and :func:`~.runtime.enable_scene_parallel` (4DNeX patches first, then
  ``ModelMixin.enable_parallelism`` with a ``ContextParallelConfig``, then the CFG hook).
* :mod:`.cfg_parallel` - a diffusers ``ModelHook`` that runs the conditional and unconditional
  passes of one step on two ranks.
* :mod:`.batch` - one output folder per image, written atomically, finished scenes skipped on a
  rerun, failures reported without stopping the others, one summary.

No scheduler and no collective of our own: work is split statically over ranks and every
collective is torch.distributed's or diffusers'.
"""
