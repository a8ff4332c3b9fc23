"""Flag syntax: the words after a command's name become its flag values and arguments.

pflag's rules, as kamal-proxy v0.9 gets them from cobra/pflag: ``--flag=value`` and
``--flag value``, repeatable comma lists, booleans only as ``--flag`` or ``--flag=false``
(a value after a space is a positional), ``--`` ends the flags, no shorthands. Values are
converted by kind (``flag_values.py``); run options the line leaves out come from the
environment. What the values mean is the command parser's business (``command_parser.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from kproxy.core.command_table import GLOBAL_FLAGS, CommandSpec, Flag, FlagValue, Kind
from kproxy.core.flag_values import parse_bool, parse_duration, parse_int
from kproxy.errors import UsageError


@attrs.frozen
class Parsed:
    spec: CommandSpec
    args: tuple[str, ...]
    values: Mapping[str, FlagValue]
    given: frozenset[str]  # flags set on the command line (or, for run, by the environment)
    sources: Mapping[str, str] = attrs.field(factory=dict)  # flag → environment variable

    def text(self, name: str) -> str:
        value = self.values[name]
        assert isinstance(value, str)
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.values[name]
        assert isinstance(value, tuple)
        return value

    def seconds(self, name: str) -> float:
        value = self.values[name]
        assert isinstance(value, float | int)
        return float(value)

    def integer(self, name: str) -> int:
        value = self.values[name]
        assert isinstance(value, int)
        return value

    def flag(self, name: str) -> bool:
        value = self.values[name]
        assert isinstance(value, bool)
        return value


def parse_flags(spec: CommandSpec, words: Sequence[str], env: Mapping[str, str]) -> Parsed:
    values: dict[str, FlagValue] = {f.name: f.default for f in (*spec.flags, *GLOBAL_FLAGS)}
    given: set[str] = set()
    lists: dict[str, list[str]] = {}
    args: list[str] = []
    after_bool: dict[int, str] = {}  # positional index → the bare boolean flag just before it
    bare_bool = ""
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            args.extend(words[i:])
            break
        if not word.startswith("-") or word == "-":
            if bare_bool:
                after_bool[len(args)] = bare_bool
            args.append(word)
            bare_bool = ""
            continue
        bare_bool = ""
        if not word.startswith("--"):
            raise UsageError(
                f"{spec.name}: unknown shorthand flag {word!r}; "
                "kproxy flags are long, like --target"
            )
        name, has_value, raw = word[2:].partition("=")
        found = spec.flag(name)
        if found is None:
            raise UsageError(f"{spec.name}: unknown flag --{name} (see 'help {spec.name}')")
        flag = found
        if not has_value:
            if flag.kind is Kind.BOOL:
                raw, bare_bool = "true", name
            elif i < len(words):
                raw, i = words[i], i + 1
            else:
                raise UsageError(f"{spec.name}: flag --{name} needs a value")
        key = flag.name  # an alias (run --state-path) sets the flag it names
        if flag.kind is Kind.LIST:
            items = [item.strip() for item in raw.split(",")]
            lists.setdefault(key, []).extend(item for item in items if item)
            values[key] = tuple(lists[key])
        else:
            values[key] = _convert(spec, flag, raw, "")
        given.add(key)
    # Run options the command line left out come from the environment (a flag beats it, and
    # an unusable variable behind a flag does no harm).
    sources: dict[str, str] = {}
    for flag in spec.flags:
        if flag.env and flag.name not in given and (from_env := _env_value(flag.name, env)):
            key, raw = from_env
            values[flag.name] = _convert(spec, flag, raw, key)
            given.add(flag.name)
            sources[flag.name] = key
    _check_arg_count(spec, args, after_bool)
    return Parsed(spec, tuple(args), values, frozenset(given), sources)


def _check_arg_count(spec: CommandSpec, args: Sequence[str], after_bool: Mapping[int, str]) -> None:
    want = " ".join(f"<{a}>" for a in spec.args)
    usage_hint = f"usage: {spec.name} {want}".rstrip()
    if len(args) > len(spec.args) and not spec.optional_args:
        extra = len(spec.args)
        message = f"{spec.name}: unexpected argument {args[extra]!r}"
        if bare := after_bool.get(extra):
            message += (
                f" (a boolean flag takes its value after '=': --{bare}={args[extra]},"
                f" not --{bare} {args[extra]})"
            )
        raise UsageError(f"{message}; {usage_hint}")
    if len(args) < len(spec.args) and not spec.optional_args:
        missing = " ".join(f"<{a}>" for a in spec.args[len(args) :])
        raise UsageError(f"{spec.name}: missing {missing}; {usage_hint}")


def _env_value(name: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """The first of KPROXY_X, KAMAL_PROXY_X and X that is set and not empty, as (key, value)."""
    key = name.upper().replace("-", "_")
    for candidate in (f"KPROXY_{key}", f"KAMAL_PROXY_{key}", key):
        if env.get(candidate):
            return candidate, env[candidate]
    return None


def _convert(spec: CommandSpec, flag: Flag, raw: str, env_key: str) -> FlagValue:
    try:
        match flag.kind:
            case Kind.BOOL:
                return parse_bool(raw)
            case Kind.DURATION:
                return parse_duration(raw)
            case Kind.INT:
                return parse_int(raw)
            case Kind.LIST:
                return tuple(item.strip() for item in raw.split(",") if item.strip())
            case Kind.STRING:
                return raw
    except ValueError as exc:
        source = f"${env_key} (for --{flag.name})" if env_key else f"--{flag.name}"
        raise UsageError(f"{spec.name}: invalid {source}: {exc}") from None
