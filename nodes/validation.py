"""Queue-time checks for ComfyUI's ``VALIDATE_INPUTS``: a bad widget value is rejected when the
prompt is queued (HTTP 400 naming the input), not minutes later at run time.

ComfyUI passes the constant value of each input named in a node's ``VALIDATE_INPUTS`` signature
(``None`` when the input is linked to another node's output) and then *skips its own min/max
checks for those inputs*, so each check here also enforces the widget's range. Each function
returns ``True`` or the error text, as ComfyUI expects.
"""

from __future__ import annotations

from . import comfy_bridge as cb


def check_all(*results) -> bool | str:
    """The first error text among ``results`` (each ``True`` or a string), else ``True``."""
    for r in results:
        if r is not True:
            return r
    return True


def int_range(name: str, value, lo: int, hi: int, *, step: int = 1, offset: int = 0, form: str = "") -> bool | str:
    """``value`` (skipped when None = linked) must be an int in ``[lo, hi]`` with ``(value - offset) % step == 0``."""
    if value is None:
        return True
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi or (value - offset) % step:
        return f"{name} must be {form or 'an integer'} in {lo}..{hi}, got {value!r}."
    return True


def frames_4k1(name: str, value, lo: int = 5, hi: int = 81) -> bool | str:
    """Frame counts of Wan's causal VAE: ``4k + 1``."""
    return int_range(name, value, lo, hi, step=4, offset=1, form="4k+1 (e.g. 9, 25, 49)")


def size_16(name: str, value, lo: int = 64, hi: int = 2048) -> bool | str:
    """Pixel sizes the VAE (x8) and the DiT patches (x2) divide: multiples of 16."""
    return int_range(name, value, lo, hi, step=16, form="a multiple of 16")


def filename_prefix(value) -> bool | str:
    """An output name that stays inside the output folder and fits the file system."""
    if value is None:
        return True
    return cb.prefix_problem(str(value) or "fourd") or True      # empty: the nodes' default name, as at run time


def config_value(cls, name: str, value, label: str | None = None) -> bool | str:
    """``value`` (skipped when None = linked) must obey the rule of config field ``name`` of ``cls``
    (:func:`fourd_core.settings.check`) and lie in the node widget's range (ComfyUI skips its own range
    check for inputs named in ``VALIDATE_INPUTS``)."""
    from ..fourd_core.errors import InputError
    from ..fourd_core.settings import check, spec

    if value is None:
        return True
    label = label or name
    try:
        check(cls, name, value, flag=label)
    except InputError as exc:
        return str(exc)
    s = spec(cls, name)
    low = s.node_low if s.node_low is not None else s.low
    high = s.node_high if s.node_high is not None else s.high
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{label} must be {s.describe().split(' in ')[0].split(' >=')[0]} in {low:g}..{high:g}, got {value!r}."
    return True
