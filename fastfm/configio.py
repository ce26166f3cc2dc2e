"""Reading a schema of nested dataclasses from YAML and ``--section.key VALUE`` overrides.

Generic over the schema: a *section* is a dataclass-typed field, every other field is a *key*
declared with :func:`opt` (its default and help line).  A section may map renamed keys to their
replacement in a ``replaced`` ClassVar.  Every error is a :class:`ConfigError` whose message starts
with the dotted key.  Needs no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import stat
import typing
from collections.abc import Sequence
from pathlib import Path

import yaml

# A preset is a few KB; the bound keeps a mistyped path (a data file, /dev/zero) from filling memory.
MAX_FILE_BYTES = 1 << 20


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message starts with the dotted key."""


def opt(default, help: str):  # noqa: A002 - "help" reads best at the call sites
    """A key: its default (an immutable value) and the help line shown by ``--help``."""
    return dataclasses.field(default=default, metadata={"help": help})


def section(cls):
    """A section: a nested dataclass, fresh for every instance of the schema."""
    return dataclasses.field(default_factory=cls)


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only true/false (any case).

    YAML 1.1 also reads yes/no/on/off as booleans, which would turn ``resume: yes`` into ``True``
    for a key whose values are no | yes | auto.
    """


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|false)$", re.I),
                                    list("tTfF"))

# Spellings accepted for boolean keys (``--train.progress off``): YAML 1.2 reads them as strings.
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}

_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
                (stat.S_ISSOCK, "a socket"))


def read_yaml(path: Path, missing_hint: str = "", limit: int = MAX_FILE_BYTES) -> dict:
    """The mapping in the YAML file ``path``; ``missing_hint`` follows "not found" in the error.

    Only a regular file of at most ``limit`` bytes is read: it is checked with ``stat`` before it is
    opened (opening a named pipe blocks until a writer comes), and no more than ``limit + 1`` bytes
    are read, so a file that grows or lies about its size is caught too.
    """
    def bad(why: str) -> ConfigError:
        return ConfigError(f"config file {path}: {why}")

    too_big = f"is larger than {limit} bytes, too large for a config file"

    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise bad("is a folder, not a YAML file")
        if not stat.S_ISREG(st.st_mode):
            kind = next((f"is {kind}, " for is_kind, kind in _NOT_REGULAR if is_kind(st.st_mode)), "")
            raise bad(f"{kind}not a regular file")
        if st.st_size > limit:
            raise bad(too_big)
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise bad(f"not found{missing_hint}") from None
    except OSError as e:
        raise bad(f"cannot be read ({e.strerror})") from None
    if len(data) > limit:
        raise bad(too_big)
    try:
        d = yaml.load(data.decode("utf-8"), Loader=_Yaml12Loader)
    except UnicodeDecodeError:
        raise bad("not a text file (is it a checkpoint or an image?)") from None
    except yaml.YAMLError as e:
        raise bad(f"not valid YAML ({e})") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise bad(f"must hold a mapping of sections, got {type(d).__name__}")
    return d


def dump_yaml(d: dict) -> str:
    return yaml.safe_dump(d, sort_keys=False)


# ---------------------------------------------------------------------- keys and values

def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def all_keys(schema, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every key of ``schema`` as ``{"section.key": field}``, in declaration order."""
    out = {}
    hints = _hints(schema)
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(all_keys(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = f
    return out


def _unknown(schema, key: str, candidates: list[str]) -> ConfigError:
    *sections, leaf = key.split(".")
    owner = schema
    for s in sections:
        owner = _hints(owner).get(s) if dataclasses.is_dataclass(owner) else None
    replaced = getattr(owner, "replaced", {}) if sections and dataclasses.is_dataclass(owner) else {}
    if leaf in replaced:
        return ConfigError(f"{key}: replaced by {'.'.join(sections)}.{replaced[leaf]}")
    close = difflib.get_close_matches(key, candidates, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{key}: unknown key{hint}")


def build(schema, d: dict):
    """An instance of ``schema`` from the nested dict ``d``, every key known and every value
    coerced to its key's type (no range checks: those are the schema's)."""
    return _build(schema, d, "", schema)


def _build(schema, d, prefix: str, root):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: must be a mapping, got {d!r}")
    hints = _hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    kwargs = {}
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise _unknown(root, dotted, [f"{prefix}{n}" for n in names])
        tp = hints[key]
        kwargs[key] = (_build(tp, value, f"{dotted}.", root) if dataclasses.is_dataclass(tp)
                       else _coerce(value, tp, dotted))
    return schema(**kwargs)


def _coerce(value, tp, key: str):
    """``value`` (from YAML or the CLI) as type ``tp``, or :class:`ConfigError` naming ``key``.

    Strings that spell numbers are accepted for numeric keys: PyYAML reads ``3e-4`` (no dot) as a
    string, and the CLI hands over strings.
    """
    def bad(why: str):
        return ConfigError(f"{key}: {why}, got {value!r} ({type(value).__name__})")

    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).lower() in _TRUE | _FALSE:
            return str(value).lower() in _TRUE
        raise bad("expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise bad("expected an integer")
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise bad("expected an integer") from None
        if not f.is_integer():       # also nan and inf
            raise bad("expected an integer")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise bad("expected a number")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise bad("expected a number") from None
        if not math.isfinite(f):       # nan/inf would pass every range check
            raise bad("expected a finite number")
        return f
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad("expected a string")
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad(f"expected a list of {len(args)} values")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    raise TypeError(f"{key}: config type {tp} is not supported")  # a programming error, not a user one


def plain(obj):
    """``obj`` with tuples as lists (what YAML and checkpoints hold)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def resolve_key(schema, key: str) -> str:
    """``epochs`` -> ``train.epochs`` when one section has it; dotted keys are checked."""
    key = key.replace("-", "_")
    keys = all_keys(schema)
    if key in keys:
        return key
    if "." not in key:
        owners = [k for k in keys if k.split(".")[-1] == key]
        if len(owners) == 1:
            return owners[0]
        if len(owners) > 1:
            raise ConfigError(f"{key}: ambiguous, say which: {', '.join('--' + k for k in owners)}")
    raise _unknown(schema, key, list(keys))


def parse_overrides(schema, tokens: Sequence[str]) -> list[tuple[str, object]]:
    """``["--optim.lr", "1e-3", "--epochs=3"]`` -> ``[("optim.lr", 0.001), ("train.epochs", 3)]``.

    Values are read as YAML scalars (``true``, ``3``, ``[0.1, 0.2]``) and checked by :func:`build`
    against the key's type.
    """
    out, i = [], 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"{tok}: expected an option --section.key VALUE")
        if "=" in tok:
            key, raw = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise ConfigError(f"{resolve_key(schema, tok[2:])}: missing value after {tok}")
            key, raw = tok[2:], tokens[i + 1]
            i += 2
        key = resolve_key(schema, key)
        try:
            value = yaml.load(raw, Loader=_Yaml12Loader)
        except yaml.YAMLError:
            value = raw
        out.append((key, "" if value is None else value))
    return out


def set_dotted(d: dict, key: str, value) -> None:
    """``d["a"]["b"] = value`` for ``key`` ``"a.b"``, creating the sections on the way."""
    *sections, leaf = key.split(".")
    for s in sections:
        node = d.setdefault(s, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{s}: must be a mapping, got {node!r}")
        d = node
    d[leaf] = value


def keys_help(schema) -> str:
    """One line per key: ``--section.key TYPE (default: ...)  help``."""
    defaults = plain(schema())
    lines = []
    for key, f in all_keys(schema).items():
        value, owner = defaults, schema
        *sections, leaf = key.split(".")
        for s in sections:
            value, owner = value[s], _hints(owner)[s]
        help_text = f.metadata.get("help", "")
        lines.append(f"  --{key} {_type_name(_hints(owner)[leaf])} (default: {value[leaf]!r})"
                     f"{'  ' + help_text if help_text else ''}")
    return "\n".join(lines)


def _type_name(tp) -> str:
    if typing.get_origin(tp) is tuple:
        return ",".join(a.__name__.upper() for a in typing.get_args(tp))
    return tp.__name__.upper()


def arg_parser(schema, description: str, config_help: str) -> argparse.ArgumentParser:
    """``--config FILE`` (``config_help``) and, in the epilog, every key of ``schema``; the
    ``--section.key VALUE`` overrides are what ``parse_known_args`` leaves over."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (override any with --section.key VALUE; a bare --key when unambiguous):\n"
               + keys_help(schema))
    parser.add_argument("--config", metavar="FILE", help=config_help)
    return parser
