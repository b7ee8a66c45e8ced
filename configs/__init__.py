"""Configuration presets (YAML, shipped as package data) and their loader.

    cfg = load_config("default", overrides=["planner.samples=100"])

A preset name resolves to ``<name>.yaml`` in this package; anything with a path separator or a
``.yaml``/``.yml`` suffix is read as a file. A preset may name a ``base:`` preset whose values it
overrides. Errors name the dotted path of the bad field, what was given and what is allowed, and
nothing is applied until the whole result validates.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import UserError
from .schema import Config

__all__ = ["Config", "ConfigError", "UserError", "available_presets", "load_config"]


class ConfigError(UserError, ValueError):
    """A configuration file or override that cannot be used; the message says which field and why."""


def available_presets() -> list[str]:
    return sorted(
        p.name.rsplit(".", 1)[0] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml")
    )


def _read_yaml(name_or_path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    is_file = "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")) or Path(name_or_path).exists()
    if is_file:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"config file {name_or_path!r} does not exist")
        text, where = path.read_text(), str(path)
    else:
        resource = resources.files(__name__) / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ConfigError(
                f"unknown config preset {name_or_path!r}; presets: {', '.join(available_presets())} "
                "(or give a path to a .yaml file)"
            )
        text, where = resource.read_text(), f"preset {name_or_path!r}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{where}: 'base' must name a preset or file, got {base!r}")
        if base in _seen:
            raise ConfigError(
                f"{where}: presets include each other in a loop: {' -> '.join(_seen + (base,))}"
            )
        data = _merge(_read_yaml(base, _seen + (name_or_path,)), data)
    return data


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(
            f"override {override!r} must look like section.field=value, e.g. sim.image_size=128"
        )
    dotted, raw = override.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {override!r} names no field")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML: {exc}") from None
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def _format_errors(exc: ValidationError, where: str) -> str:
    lines = [f"invalid configuration ({where}):"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        given = err.get("input")
        if err["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown field (given {given!r}); check the spelling against the preset")
        else:
            lines.append(f"  {path}: {err['msg']} (given {given!r})")
    return "\n".join(lines)


def load_config(name_or_path: str = "default", overrides: list[str] | None = None) -> Config:
    """Load a preset or YAML file, apply ``section.field=value`` overrides, and validate it all at once."""
    # Fields a file or override leaves out keep their defaults, nested ones included.
    data = _merge(Config().model_dump(), _read_yaml(name_or_path))
    for override in overrides or []:
        _apply_override(data, override)
    where = name_or_path + (f" with overrides {overrides}" if overrides else "")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, where)) from None
