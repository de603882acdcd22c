"""Generate the configuration reference (docs/configuration.md) from the settings models.

Fully generic: it walks `Settings.model_fields` and recurses into nested models, lists of
models, dicts of models and discriminated unions, so a new section or key shows up in the
reference without touching this file. `python -m presence.docgen > docs/configuration.md`.
"""

from __future__ import annotations

import inspect
import json
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import PurePath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from presence.settings import Settings

__all__ = ["main", "render_configuration"]

_INTRO = """\
# Configuration reference

<!-- Generated from presence/settings.py by `python -m presence.docgen`; do not edit. -->

presence reads one TOML file, given with `-c FILE` or the `PRESENCE_CONFIG` environment
variable. Every key can be overridden by an environment variable
`PRESENCE_<SECTION>__<KEY>` (e.g. `PRESENCE_BROKER__PASSWORD`; nested tables add another
`__<KEY>`, arrays of tables take a JSON list). Invalid configuration fails at start-up naming
each field and the reason; unknown keys are errors; secrets never appear in logs.

A default of "required" means the key must be given; "—" means unset.
"""

_ENV = str(Settings.model_config.get("env_prefix") or "")
_SEP = str(Settings.model_config.get("env_nested_delimiter") or "__")
_BOUNDS = (
    *(("gt", "> {}"), ("ge", "≥ {}"), ("lt", "< {}"), ("le", "≤ {}")),
    *(("min_length", "length ≥ {}"), ("max_length", "length ≤ {}"), ("pattern", "matches `{}`")),
)
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", SecretStr: "secret"}


@dataclass(frozen=True)
class _Where:
    """Where a table lives: its TOML path, and how it is written when it is not a plain table."""

    path: tuple[str, ...] = ()
    array: bool = False  # an array of tables: [[path]]
    tag: str = ""  # the discriminator of an array-of-tables member: type = "webhook"
    inline: tuple[tuple[str, str, str], ...] = ()  # (key = {, discriminator, }) inside a table
    env: str | None = _ENV  # variable prefix (of an array: its variable); None if none

    def heading(self) -> str:
        """The section title, e.g. `[broker.tls]` or `[[services]] action = { type = "x", ... }`."""
        if self.path:
            joined = ".".join(self.path)
            base = (f"[[{joined}]]" if self.array else f"[{joined}]") + self.tag
        else:
            base = "" if self.inline else "top level"
        inner = "..."
        for opening, tag, closing in reversed(self.inline):
            inner = f"{opening} {tag + ', ' if tag else ''}{inner} {closing}"
        return f"{base} {inner}".strip() if self.inline else base


def _strip(annotation: Any) -> tuple[Any, str | None]:
    """Remove `Annotated` and `None` from a union; return the rest and any discriminator."""
    discriminator = None
    if get_origin(annotation) is Annotated:
        annotation, *extras = get_args(annotation)
        for extra in extras:
            if isinstance(extra, FieldInfo) and isinstance(extra.discriminator, str):
                discriminator = extra.discriminator
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(rest) == 1:
            return _strip(rest[0])[0], discriminator
    return annotation, discriminator


def _members(annotation: Any) -> list[type[BaseModel]]:
    """The models a (possibly union) annotation admits; empty unless all its members are models."""
    args = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else ()
    found = [arg for arg in args or (annotation,) if arg is not type(None)]
    ok = all(isinstance(arg, type) and issubclass(arg, BaseModel) for arg in found)
    return found if ok else []


def _tag(model: type[BaseModel], discriminator: str | None) -> str:
    """`type = "exec"` for a union member (the discriminator's Literal value)."""
    if discriminator is None or discriminator not in model.model_fields:
        return ""
    values = get_args(model.model_fields[discriminator].annotation)
    return " or ".join(f"{discriminator} = {_literal(value)}" for value in values)


def _doc(model: type[BaseModel]) -> str:
    """A model's own docstring on one line."""
    own = model.__dict__.get("__doc__")
    return " ".join(inspect.cleandoc(own).split()) if isinstance(own, str) else ""


def _literal(value: Any) -> str:
    """A default value as a TOML-ish literal."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, str | PurePath | SecretStr):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True, exclude_defaults=True) | {
            name: getattr(value, name)
            for name, field in type(value).model_fields.items()
            if get_origin(field.annotation) is Literal and len(get_args(field.annotation)) == 1
        }
    if isinstance(value, dict):
        pairs = ", ".join(f"{key} = {_literal(item)}" for key, item in value.items())
        return f"{{ {pairs} }}" if pairs else "{}"
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    return repr(value)


def _type(annotation: Any) -> str:
    """A readable name of a field's type."""
    annotation, _ = _strip(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " or ".join(f"`{_literal(arg)}`" for arg in args)
    if _members(annotation):
        models = _members(annotation)
        return "table" if len(models) == 1 else "table, one of the kinds below"
    if origin in (list, tuple, set, frozenset):
        tables = bool(args) and bool(_members(_strip(args[0])[0]))
        inner = _type(args[0]) if args else "any"
        return "array of " + inner.replace("table", "tables", 1) if tables else f"list of {inner}"
    if origin is dict:
        plain = len(args) != 2 or args[1] is Any
        return "table" if plain else "table of " + _type(args[1]).replace("table", "tables", 1)
    if origin in (Union, types.UnionType):
        return " or ".join(_type(arg) for arg in args if arg is not type(None))
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "path"
    return _SCALARS.get(
        annotation, "any" if annotation is Any else getattr(annotation, "__name__", "any")
    )


def _constraints(field: FieldInfo) -> str:
    """Bounds, lengths and patterns from the field's metadata, e.g. `(1-65535)` with an en dash."""
    found = {
        name: getattr(item, name)
        for item in field.metadata
        for name, _ in _BOUNDS
        if getattr(item, name, None) is not None
    }
    parts = []
    if "ge" in found and "le" in found:
        parts.append(f"{found.pop('ge')}\N{EN DASH}{found.pop('le')}")
    if found.get("min_length") == 1:
        parts.append("not empty")
        del found["min_length"]
    parts += [text.format(found[name]) for name, text in _BOUNDS if name in found]
    return f" ({', '.join(parts)})" if parts else ""


def _default(field: FieldInfo) -> str:
    """The default as it would be written in TOML, "required" or "—"."""
    if field.is_required():
        return "required"
    value = _literal(field.get_default(call_default_factory=True, validated_data={}))
    return value if value == "—" else f"`{value}`"


def _shape(field: FieldInfo) -> tuple[str, list[type[BaseModel]], str | None]:
    """How a field nests: "" (a value), "table", "list" or "dict"; its models; the discriminator."""
    annotation, discriminator = _strip(field.annotation)
    if isinstance(field.discriminator, str):
        discriminator = field.discriminator
    origin, args = get_origin(annotation), get_args(annotation)
    shape = "list" if origin in (list, tuple) and args else "dict" if origin is dict else "table"
    if shape != "table" and len(args) in (1, 2):
        annotation, inner = _strip(args[-1])
        discriminator = discriminator or inner
    models = _members(annotation)
    return (shape if models else ""), models, discriminator


def _place(where: _Where, key: str, shape: str, tag: str) -> _Where:
    """Where the table of `key` (a field of the table at `where`) lives."""
    if where.inline or (shape == "table" and tag):
        opening, closing = (f"{key} = [{{", "}]") if shape == "list" else (f"{key} = {{", "}")
        inline = (*where.inline, (opening, tag, closing))
        return replace(where, inline=inline, env=None)
    path = (*where.path, key, "<name>") if shape == "dict" else (*where.path, key)
    env = f"{where.env}{key.upper()}" if where.env and not where.array else None
    env = None if shape == "dict" or env is None else env if shape == "list" else env + _SEP
    return _Where(path=path, array=shape == "list", tag=f" {tag}" if tag else "", env=env)


def _walk(model: type[BaseModel], where: _Where, about: str, selector: str) -> Iterator[str]:
    """Yield the Markdown section of `model`, then those of every table nested in it."""
    rows, nested = [], []
    for name, field in model.model_fields.items():
        key = field.alias or name
        shape, models, discriminator = _shape(field)
        meaning = field.description or (_doc(models[0]) if len(models) == 1 else "")
        if not meaning and name == selector:
            meaning = "selects this kind"
        for member in models:
            tag = _tag(member, discriminator) if len(models) > 1 else ""
            sub = _place(where, key, shape, tag)
            text = "" if tag else field.description or ""  # not repeated for every kind
            nested.append((member, sub, text, (discriminator or "") if tag else ""))
        if models:
            see = f"see `{nested[-len(models)][1].heading()}`"
            see += " and the other kinds below" if len(models) > 1 else ""
            meaning = f"{meaning.rstrip('.')}; {see}" if meaning else see.capitalize()
        meaning = (meaning + _constraints(field)).strip() or "—"
        cells = [f"`{key}`", _type(field.annotation), _default(field), meaning]
        cells = [" ".join(cell.replace("|", "\\|").splitlines()) for cell in cells]
        rows.append("| " + " | ".join(cells) + " |\n")
    parts = [_doc(model), about]
    if where.env:
        env = f"a JSON list in `{where.env}`" if where.array else f"`{where.env}<KEY>`"
        parts.append(f"Environment: {env}")
    intro = " ".join(part if part.endswith(".") else part + "." for part in parts if part)
    yield f"## `{where.heading()}`\n"
    if intro.strip():
        yield intro.strip() + "\n"
    yield "| key | type | default | meaning |\n|---|---|---|---|\n" + "".join(rows)
    for member, sub, text, discriminator in nested:
        yield from _walk(member, sub, text, discriminator)


def render_configuration() -> str:
    """The configuration reference as Markdown, one section per TOML table."""
    return _INTRO + "".join("\n" + part for part in _walk(Settings, _Where(), "", ""))


def main() -> None:
    """Print the reference (`python -m presence.docgen > docs/configuration.md`)."""
    sys.stdout.write(render_configuration())


if __name__ == "__main__":
    main()
