"""The command line's options, generated from the run specification's fields.

Every option of ``iwae train`` is a field of ``iwae.training.spec.PaperSpec``: its flag is the
field's name with dashes, its type, choices, lower bound and help come from the field, so
they are written once. The options other commands share (--data-dir, --device, --threads)
are made here once too.
"""
import argparse
import dataclasses
import os

from ..training.spec import PaperSpec, SettingError, check_field, parse_pair

ALIASES = {"bound": ("--objective",)}         # earlier names of a flag, still accepted
FIELDS = {f.name: f for f in dataclasses.fields(PaperSpec)}
THREADS = "torch threads (default: 1 while training, where a small step gains nothing from more; all the cores " \
          "while evaluating)"


def flag(name):
    return "--" + name.replace("_", "-")


def add_spec_options(p):
    """One option per command-line field of PaperSpec, with no default: the namespace then
    holds the flags typed, which ``given`` returns (a resumed run keeps the others)."""
    for f in FIELDS.values():
        if f.metadata["cli"]:
            add_field(p, f.name, default=argparse.SUPPRESS)


def add_field(p, name, **overrides):
    """The option of the spec field `name`, on parser p."""
    f = FIELDS[name]
    shown = f.default is not None and f.default is not False
    help_text = f.metadata["help"] + (f" (default: {_show(f.default)})" if shown else "")
    kwargs = {"dest": name, "help": help_text, "default": f.default, **f.metadata["flag"]}
    if f.type is bool:
        kwargs["action"] = "store_true"
    else:
        kwargs["type"] = parser_of(f)
        if f.metadata["choices"] is not None:
            kwargs["choices"] = f.metadata["choices"]
    p.add_argument(flag(name), *ALIASES.get(name, ()), **{**kwargs, **overrides})


def _show(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def parser_of(f):
    """An argparse type for field f: the text parsed as the field's type and checked as
    validate() checks it, so that a bad value is argparse's one line."""
    def parse(text):
        try:
            value = _convert(f, text)
            check_field(f, value, choices=False)    # argparse checks the choices
        except SettingError as err:                # argparse names the flag itself
            raise argparse.ArgumentTypeError(err.bare) from None
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value
    parse.__name__ = f.name                    # argparse names the type in "invalid NAME value"
    return parse


def _convert(f, text):
    kinds = {int: int, float: float, tuple: parse_pair}
    for kind, convert in kinds.items():
        if f.type is kind or f.type == (kind | None):
            try:
                return convert(text)
            except ValueError:
                if kind is tuple:
                    raise
                raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    return text


def given(args):
    """The spec fields typed on the command line, by name."""
    return {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}


def spec_from(args, saved=None):
    """The PaperSpec of ``iwae train``'s flags, over saved (a resumed run's spec) if given."""
    typed = given(args)
    if saved is None:
        return PaperSpec(**typed).validate()
    if not isinstance(saved, PaperSpec):
        raise ValueError("resume: the run was trained by iwae.fit; continue it with iwae.fit(..., resume=True)")
    return dataclasses.replace(saved, **typed).validate()


def int_at_least(low):
    """An argparse type: an integer >= low (the options of commands that are not a spec)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    return parse


COUNT = int_at_least(1)                        # an option counting something: 1 or more


def fraction(text):
    """A number in [0, 1) (--missing of iwae evaluate)."""
    return parser_of(FIELDS["missing"])(text)


def add_device(p):
    add_field(p, "device")


def add_data_dir(p):
    add_field(p, "data_dir")


def add_threads(p):
    p.add_argument("--threads", type=COUNT, help=THREADS)


def cores():
    """The cores this process may run on (its CPU affinity), shared by torchrun's local processes."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        local = 1
    return max(1, n // max(1, local))


def set_threads(n, training):
    """torch threads for the work ahead: n, else 1 for training and all the cores for evaluating."""
    import torch
    torch.set_num_threads(n or (1 if training else cores()))

