"""Settings written once: a config dataclass field carries its default, its range or choices and its help,
and the checks, the command line and the ComfyUI node inputs are all built from it.

::

    @dataclasses.dataclass
    class SamplingConfig:
        steps: int = setting(50, help="denoising steps", low=1, high=1000)

    validate(config)                                   # every field's rule (InputError naming the fix)
    add_arguments(parser, SamplingConfig, ["steps"])   # --steps, its type, choices and help
    node_input(SamplingConfig, "steps")                # ("INT", {"default": 50, "min": 1, "max": 1000, ...})

Rules the configs of several commands share (the same option must mean the same everywhere) are checked
through the one field that owns them, e.g. ``check(ExportOptions, "min_confidence", value)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any

from .errors import InputError

_KEY = "fourd"

#: The rule of every confidence threshold (exports, splats, previews, the CLI): defined once here.
MIN_CONFIDENCE = dict(help="drop pixels below this confidence", low=0.0, high=1.0, step=0.05,
                      hint="a fraction: 0.5 keeps pixels with confidence >= 50 %")


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a config field allows and says about itself.

    Attributes:
        help: one line for ``--help`` and the node tooltip.
        low, high: inclusive numeric range (None = unbounded). integer: whole numbers only.
        multiple_of / offset: ``(value - offset) % multiple_of == 0`` (e.g. 4k + 1 frames: 4 / 1).
        choices: the allowed values (a tuple, or a zero-argument callable returning one, for choices a
            registry provides). hint: added to the error message (how to choose a good value).
        flag: the command-line flag (default ``--field-name``); for a boolean, the switch that flips its default
            (default ``--field-name`` for a False default, ``--no-field-name`` for a True one).
        labels: ``{label: value}`` for a field whose values are shown as words (e.g. ``{"auto": None,
            "shared": True, "per-frame": False}``): the CLI choices and the node combo are the labels.
        step: the node widget's step.
        node_low, node_high: the widget's range where it should be narrower than the rule's.
        allow_none: None is a valid value (e.g. "chosen from the data").
    """

    help: str
    low: float | None = None
    high: float | None = None
    integer: bool = False
    multiple_of: int | None = None
    offset: int = 0
    choices: Any = None
    hint: str = ""
    flag: str | None = None
    labels: dict | None = None
    step: float | None = None
    node_low: float | None = None
    node_high: float | None = None
    allow_none: bool = False

    def allowed(self) -> tuple | None:
        if self.labels is not None:
            return tuple(self.labels.values())
        return tuple(self.choices()) if callable(self.choices) else (tuple(self.choices) if self.choices else None)

    def label_of(self, value) -> str:
        """The label of ``value`` (``labels`` reversed), or ``value`` itself."""
        if self.labels is None:
            return value
        return next(k for k, v in self.labels.items() if v == value)

    def describe(self) -> str:
        if self.labels is not None:
            return "one of " + ", ".join(self.labels)
        if self.allowed() is not None:
            return "one of " + ", ".join(map(str, self.allowed()))
        kind = "an integer" if self.integer else "a number"
        if self.multiple_of:
            kind = (f"{self.multiple_of}k+{self.offset}" if self.offset else f"a multiple of {self.multiple_of}")
        if self.low is not None and self.high is not None:
            return f"{kind} in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{kind} >= {self.low:g}"
        return f"{kind} <= {self.high:g}" if self.high is not None else kind


def setting(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,  # noqa: A002
            **rules) -> Any:
    """A dataclass field with a :class:`Spec` (``help`` plus the keyword rules of :class:`Spec`)."""
    spec = Spec(help=" ".join(help.split()), **rules)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={_KEY: spec})
    return dataclasses.field(default=default, metadata={_KEY: spec})


def _field(cls, name: str) -> dataclasses.Field:
    cls = cls if isinstance(cls, type) else type(cls)
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def spec(cls, name: str) -> Spec:
    """The :class:`Spec` of field ``name`` of the config class (or instance) ``cls``."""
    f = _field(cls, name)
    if _KEY not in f.metadata:
        raise KeyError(f"{name!r} of {getattr(cls, '__name__', cls)} is not a setting")
    return f.metadata[_KEY]


def default(cls, name: str) -> Any:
    """The default value of field ``name``."""
    f = _field(cls, name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def check(cls, name: str, value: Any, *, flag: str | None = None) -> Any:
    """Return ``value`` if it obeys the rule of field ``name`` of ``cls``.

    Args:
        flag: how the message names the option (default: the field's name).
    Raises:
        InputError: wrong type, NaN, out of range, not a multiple, not among the choices (the message
            says what is allowed and the field's hint).
    """
    s = spec(cls, name)
    label = flag or name
    if value is None and s.allow_none:
        return value
    hint = f" ({s.hint})" if s.hint else ""
    allowed = s.allowed()
    if allowed is not None:
        if value not in allowed:
            shown = ", ".join(s.labels) if s.labels else ", ".join(str(a) for a in allowed if a is not None)
            raise InputError(f"{label} must be one of {shown}; got {str(value)[:40]!r}.")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if s.low is None and s.high is None and not s.integer and not s.multiple_of:
            return value
        raise InputError(f"{label} must be {s.describe()}{hint}; got {str(value)[:40]!r}.")
    bad = (isinstance(value, float) and math.isnan(value)) or (s.low is not None and value < s.low) or \
        (s.high is not None and value > s.high) or (s.integer and value != int(value)) or \
        (s.multiple_of and (int(value) - s.offset) % s.multiple_of)
    if bad:
        raise InputError(f"{label} must be {s.describe()}{hint}; got {str(value)[:40]}.")
    return value


def validate(config) -> None:
    """Check every field of ``config`` that has a :class:`Spec` (see :func:`check`).

    Raises:
        InputError: the first field that breaks its rule.
    """
    for f in dataclasses.fields(config):
        if _KEY in f.metadata:
            check(config, f.name, getattr(config, f.name))


# ----------------------------------------------------------------------------------------------
# Command line
def flag_of(cls, name: str) -> str:
    """The command-line flag of a non-boolean field ``name``: its Spec's ``flag`` or ``--field-name``."""
    return spec(cls, name).flag or "--" + name.replace("_", "-")


def _base_type(cls, name: str):
    hints = typing.get_type_hints(cls if isinstance(cls, type) else type(cls))
    t = hints.get(name, str)
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args and typing.get_origin(t) is not None else t


def add_arguments(parser, cls, names, *, defaults: dict | None = None, shown: dict | None = None,
                  int_type=int) -> None:
    """Add one option per field ``names`` of ``cls`` to ``parser`` (an ArgumentParser or group).

    Booleans become a switch that flips the default (:attr:`Spec.flag`); labelled fields take their labels
    (converted back by :func:`from_arguments`); numbers get their type; choices their choices; every help
    line ends with the default. ``defaults`` overrides the parser default of a field (``None`` = "set by
    the preset", said in the help unless ``shown`` words it); ``int_type`` parses integer options.
    """
    defaults, shown_defaults = defaults or {}, shown or {}
    for name in names:
        s = spec(cls, name)
        dflt = defaults.get(name, default(cls, name))
        base = _base_type(cls, name)
        if base is bool and s.labels is None:
            if dflt:
                parser.add_argument(s.flag or "--no-" + name.replace("_", "-"), dest=name, action="store_false",
                                    help=f"turn off: {s.help}")
            else:
                parser.add_argument(s.flag or "--" + name.replace("_", "-"), dest=name, action="store_true", help=s.help)
            continue
        kwargs: dict = {"dest": name}
        if s.labels is not None:
            kwargs.update(choices=tuple(s.labels), type=str, default=s.label_of(dflt))
            shown = kwargs["default"]
        else:
            allowed = s.allowed()
            if allowed is not None:
                kwargs["choices"] = tuple(a for a in allowed if a is not None)
            kwargs.update(type=int_type if base is int else (base if base in (float, str) else str), default=dflt)
            shown = "set by the preset" if dflt is None and not s.allow_none else dflt
        shown = shown_defaults.get(name, shown)
        kwargs["help"] = s.help if shown is None else f"{s.help} (default: {shown})"
        if len(kwargs.get("choices", ())) > 8:
            kwargs["metavar"] = "NAME"
            kwargs["help"] += "; one of " + ", ".join(map(str, kwargs["choices"]))
        parser.add_argument(flag_of(cls, name), **kwargs)


def from_arguments(cls, args: argparse.Namespace, names, **fixed) -> dict:
    """``{name: value}`` of the ``names`` parsed by :func:`add_arguments` (labels turned back into values;
    a None that the field does not allow is left out, so the config's own default applies), plus ``fixed``."""
    out = {}
    for n in names:
        value = getattr(args, n, None)
        s = spec(cls, n)
        if s.labels is not None and isinstance(value, str):
            value = s.labels[value]
        elif value is None and not s.allow_none:
            continue
        out[n] = value
    out.update(fixed)
    return out


# ----------------------------------------------------------------------------------------------
# ComfyUI node inputs
def node_input(cls, name: str, *, tooltip: str | None = None, **options) -> tuple:
    """The ComfyUI V1 input spec of field ``name``: ``("INT" | "FLOAT" | "BOOLEAN" | "STRING", {...})`` or a
    combo ``([choices], {...})``, with default, range, step and tooltip from the field; ``options``
    override or add entries (e.g. ``default=`` for a node whose default differs, ``multiline=True``)."""
    s = spec(cls, name)
    base = _base_type(cls, name)
    opts: dict = {"default": default(cls, name), "tooltip": tooltip or s.help}
    if s.labels is not None:
        opts["default"] = s.label_of(opts["default"])
        opts.update(options)
        return (list(s.labels), opts)
    allowed = s.allowed()
    if allowed is not None:
        opts.update(options)
        return ([a for a in allowed if a is not None], opts)
    if base is bool:
        kind = "BOOLEAN"
    elif base is int:
        kind = "INT"
    elif base is float:
        kind = "FLOAT"
    else:
        kind = "STRING"
    if kind in ("INT", "FLOAT"):
        low = s.node_low if s.node_low is not None else s.low
        high = s.node_high if s.node_high is not None else s.high
        if low is not None:
            opts["min"] = int(low) if kind == "INT" else float(low)
        if high is not None:
            opts["max"] = int(high) if kind == "INT" else float(high)
        step = s.step or (s.multiple_of if kind == "INT" and s.multiple_of else None)
        if step:
            opts["step"] = step
    opts.update(options)
    return (kind, opts)


def from_node(cls, name: str, value):
    """A node widget's value as the field's value (a label turned back into its value)."""
    s = spec(cls, name)
    return s.labels[value] if s.labels is not None and isinstance(value, str) else value
