"""`ConfigModel`: the base of every typed config section, and its one-line errors.

A section is a frozen pydantic model in strict mode with unknown keys refused: a string is not
an integer, a bool is not a number, and a validated config is never changed afterwards (derive
a new one with `replace`). Strict mode still takes an int for a float and a mapping for a
nested section. What Hydra's command line needs on top (a bare `7` for a string key) is the
`Str` type below, so the leniency is visible in the field's type.

Every validation failure becomes `ConfigError` with one line naming the dotted key, e.g.
`env.group_size must be an integer, got 'x'` or `unknown key env.grup_size; valid keys: ...`.
Field validators raise `ValueError` with a predicate ("must be a list of paths"); the dotted
key is put in front of it here.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

# The project's one ConfigError and the `Str` leniency, shared with the slot server's own
# config (SlotLimits, the `sandbox` section), which cannot import rollout.
from sandbox_image.config import ConfigError, Str  # noqa: F401 - re-exported


class ConfigModel(BaseModel):
    """A typed config section. `section` is its dotted key, used in error messages when the
    model is built directly (`PolicyConfig(type=...)`); `load(data, where)` names another."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    section: ClassVar[str] = ""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(format_error(e, type(self), self.section)) from None

    # This __init__ only translates errors: pydantic must keep validating nested sections
    # itself (from dicts, with full locations) instead of calling it for each of them.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def load(cls, data: Mapping[str, Any] | None, where: str | None = None) -> Self:
        """Validate a mapping (a section of the composed config) into this model."""
        where = cls.section if where is None else where
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"{where or cls.__name__} must be a mapping, got {data!r}")
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as e:
            raise ConfigError(format_error(e, cls, where)) from None

    def replace(self, **changes: Any) -> Self:
        """A new, validated copy with `changes` applied (pydantic's `model_copy(update=...)`
        skips validation; a derived config must pass the same checks as a loaded one)."""
        return self.load({**{name: getattr(self, name) for name in type(self).model_fields},
                          **changes}, self.section)


class KindSection(ConfigModel):
    """A section that is a union discriminated by one of its keys (`policy.type`,
    `trainer.type`, `tasks.kind`): each kind registers its own model, a subclass of the
    section's base holding the keys only that kind reads. Building the base
    (`PolicyConfig(type="sglang", ...)`, `PolicyConfig.load(mapping)`) builds the model of the
    kind named; a key of another kind is refused with the kind it belongs to, an unknown kind
    with the registered ones. The base answers `kinds()` (and may answer `kind_class` for one
    kind without loading the others); it is never a kind's model itself (pydantic builds
    instances through `__new__`, which on the base picks the kind)."""

    discriminator: ClassVar[str] = "type"
    default_kind: ClassVar[str] = ""

    @classmethod
    def kinds(cls) -> dict[str, type[KindSection]]:
        """Every registered kind's model, by name."""
        raise NotImplementedError

    @classmethod
    def kind_class(cls, name: Any, where: str) -> type[KindSection]:
        """The model of kind `name`, or ConfigError naming `where`.<discriminator>."""
        kinds = cls.kinds()
        if isinstance(name, str) and name in kinds:
            return kinds[name]
        return cls._unknown(list(kinds), name, where)

    @classmethod
    def _unknown(cls, known: list[str], name: Any, where: str) -> Any:
        choices = ", ".join(map(repr, known[:-1])) + f" or {known[-1]!r}" if len(known) > 1 \
            else ", ".join(map(repr, known))
        raise ConfigError(f"{where}.{cls.discriminator} must be {choices}, got {name!r}")

    @classmethod
    def _base(cls) -> type[KindSection]:
        return next(c for c in cls.__mro__ if "kinds" in c.__dict__)

    def __new__(cls, *args: Any, **data: Any) -> Any:
        if "kinds" in cls.__dict__:  # the base: build the kind's own model
            cls = cls.kind_class(data.get(cls.discriminator, cls.default_kind), cls.section)
        return super().__new__(cls)

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        if "kinds" in cls.__dict__ and isinstance(obj, Mapping):  # the base: the kind's model
            cls = cls.kind_class(obj.get(cls.discriminator, cls.default_kind), cls.section)
        return super(KindSection, cls).model_validate(obj, *args, **kwargs)  # type: ignore[misc]

    @classmethod
    def load(cls, data: Mapping[str, Any] | None, where: str | None = None) -> Self:
        where = cls.section if where is None else where
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"{where or cls.__name__} must be a mapping, got {data!r}")
        data = dict(data or {})
        base = cls._base()
        target = cls
        if cls is base:
            target = cls.kind_class(data.get(cls.discriminator, cls.default_kind), where)
        target._refuse_other_kinds(data, where)
        return super(KindSection, target).load(data, where)  # type: ignore[return-value]

    def __init__(self, **data: Any) -> None:
        type(self)._refuse_other_kinds(data, self.section)
        super().__init__(**data)

    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def _refuse_other_kinds(cls, data: Mapping[str, Any], where: str) -> None:
        """A key this kind lacks but another kind has: say whose it is (a key no kind has is
        left to the usual unknown-key error, which lists this kind's keys)."""
        unknown = [k for k in data if k not in cls.model_fields]
        if not unknown:
            return
        owners = {k: [n for n, model in cls._base().kinds().items() if k in model.model_fields]
                  for k in unknown}
        key = next((k for k in unknown if owners[k]), None)
        if key is not None:
            disc = cls.discriminator
            kind = data.get(disc, cls.model_fields[disc].default)
            raise ConfigError(
                f"{where}.{key} is a setting of {where}.{disc}={' or '.join(owners[key])}, "
                f"not of {where}.{disc}={kind}; remove it or change {where}.{disc}"
                + cls._switch_hint(kind))

    @classmethod
    def _switch_hint(cls, kind: Any) -> str:
        """More words for a key of another kind (a section whose presets set kind's keys)."""
        return ""

    def replace(self, **changes: Any) -> Self:
        """A new, validated copy; a changed kind gives that kind's model, keeping the values
        it has a key for."""
        disc = self.discriminator
        target = self._base().kind_class(changes.get(disc, getattr(self, disc)), self.section)
        values = {name: getattr(self, name) for name in type(self).model_fields
                  if name in target.model_fields}
        return target.load({**values, **changes}, self.section)  # type: ignore[return-value]


# -- the formatter --------------------------------------------------------------------------

_KIND = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list", "tuple_type": "a list", "set_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping", "is_instance_of": "a mapping",
}
_BOUND = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
          "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}


def format_error(err: ValidationError, cls: type[BaseModel], where: str = "") -> str:
    """One line for a pydantic ValidationError of `cls` read at dotted key `where`.

    Unknown keys come first (all of one mapping in one message, with its valid keys), as a
    typo usually explains the other errors too; otherwise the first error is reported.
    """
    errors = err.errors(include_url=False)
    extras = [e for e in errors if e["type"] == "extra_forbidden"]
    if extras:
        parent = extras[0]["loc"][:-1]
        keys = [dotted(where, e["loc"]) for e in extras if e["loc"][:-1] == parent]
        msg = f"unknown key{'s' if len(keys) > 1 else ''} {', '.join(keys)}"
        model = _model_at(cls, parent)
        if model is not None:
            msg += f"; valid keys: {', '.join(model.model_fields)}"
        return msg
    first = errors[0]
    text = describe(first)
    if first["loc"]:
        return f"{dotted(where, first['loc'])} {text}"
    return f"{where}: {text}" if where else text


def describe(error: Mapping[str, Any]) -> str:
    """The predicate for one pydantic error: "must be an integer, got 'x'"."""
    kind, ctx, got = error["type"], error.get("ctx") or {}, error.get("input")
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind in _KIND:
        return f"must be {_KIND[kind]}, got {got!r}"
    if kind in _BOUND:
        name, op = _BOUND[kind]
        bound = ctx.get(name)
        return f"must be {op} {f'{bound:g}' if isinstance(bound, float) else bound}, got {got!r}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}, got {got!r}"
    if kind == "missing":
        return "is required"
    if kind == "string_too_short":
        return "must not be empty"
    return f"is invalid ({error['msg']}), got {got!r}"


def dotted(where: str, loc: tuple[Any, ...]) -> str:
    """`where` + a pydantic location as a dotted key; list indices as `[i]`."""
    out = where
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class at `loc` below `cls`, through nested sections and mappings of them
    (`tasks.profiles.<repo>`); None where `loc` leads elsewhere."""
    current: Any = cls
    parts = list(loc)
    while parts:
        fields = getattr(current, "model_fields", None)
        part = parts.pop(0)
        if not isinstance(fields, dict) or part not in fields:
            return None
        current = _section_type(fields[part].annotation)
        if isinstance(current, tuple):  # a mapping of sections: the next part is its key
            if not parts:
                return None
            parts.pop(0)
            current = current[0]
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _section_type(hint: Any) -> Any:
    """The model class a field holds (Optional unwrapped), `(cls,)` for a dict of them."""
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict and len(args) == 2:
        inner = _section_type(args[1])
        return (inner,) if isinstance(inner, type) else None
    for arg in args if origin in (typing.Union, types.UnionType) else ():
        if (found := _section_type(arg)) is not None:
            return found
    return None
