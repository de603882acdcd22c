"""The shipped docs and deployment files agree with the code (pure file checks, no broker).

docs/configuration.md against the settings models, the README's and the example's TOML against
`Settings`, docker-compose.yml against the repository, and the systemd units.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema

from presence.docgen import render_configuration
from presence.settings import Settings
from tests.helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
CONFIG_DOC = ROOT / "docs" / "configuration.md"
COMPOSE = ROOT / "docker-compose.yml"
UNITS = sorted((ROOT / "contrib" / "systemd").glob("*.service"))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PRESENCE_* variable of the test runner's environment leaks into `Settings`."""
    for name in list(os.environ):
        if name.upper().startswith("PRESENCE_"):
            monkeypatch.delenv(name)


# --- docs/configuration.md -----------------------------------------------------------------


def test_configuration_reference_is_generated() -> None:
    """docs/configuration.md is exactly what the generator renders from the settings models."""
    assert CONFIG_DOC.read_text(encoding="utf-8") == render_configuration(), (
        "docs/configuration.md is stale: run `python -m presence.docgen > docs/configuration.md`"
    )


class _WithFactories(GenerateJsonSchema):
    """A JSON schema whose defaults include those made by `default_factory` (pydantic's hook)."""

    def get_default_value(self, schema: Any) -> Any:
        """The static default, else the factory's value (factories that need data excepted)."""
        if "default_factory" in schema and not schema.get("default_factory_takes_data"):
            return schema["default_factory"]()
        return super().get_default_value(schema)


def _toml(value: Any) -> str:
    """A JSON value as the reference writes a TOML default."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = ", ".join(f"{key} = {_toml(item)}" for key, item in value.items())
        return f"{{ {pairs} }}" if pairs else "{}"
    return "—" if value is None else repr(value)


def _schema_tables() -> dict[str, dict[str, Any]]:
    """Flatten `Settings`' JSON schema into {section heading: object schema}."""
    schema = Settings.model_json_schema(schema_generator=_WithFactories)
    defs = schema.get("$defs", {})

    def deref(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        return node

    def nested(prop: dict[str, Any]) -> tuple[str, list[tuple[dict[str, Any], str]]]:
        alternatives = [alt for alt in prop.get("anyOf", [prop]) if alt.get("type") != "null"]
        node, shape = alternatives[0] if len(alternatives) == 1 else prop, "table"
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            node, shape = node["items"], "list"
        elif node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
            node, shape = node["additionalProperties"], "dict"
        if "oneOf" in node and "discriminator" in node:
            name = node["discriminator"]["propertyName"]
            members = [deref(member) for member in node["oneOf"]]
            return shape, [
                (m, f"{name} = {_toml(m['properties'][name]['const'])}") for m in members
            ]
        return shape, [(deref(node), "")] if "$ref" in node else []

    found: dict[str, dict[str, Any]] = {}

    def visit(
        obj: dict[str, Any], path: list[str], array: bool, tag: str, inline: list[str]
    ) -> None:
        base = ("[[{}]]" if array else "[{}]").format(".".join(path)) + tag if path else ""
        inner = "..."
        for opening in reversed(inline):
            inner = opening.replace("@", inner)
        heading = f"{base} {inner}".strip() if inline else base or "top level"
        found[heading] = obj
        for key, prop in obj.get("properties", {}).items():
            shape, members = nested(prop)
            for member, member_tag in members:
                if inline or (shape == "table" and member_tag):
                    lead = f"{member_tag}, " if member_tag else ""
                    brace = f"[{{ {lead}@ }}]" if shape == "list" else f"{{ {lead}@ }}"
                    visit(member, path, array, tag, [*inline, f"{key} = {brace}"])
                else:
                    sub = [*path, key, "<name>"] if shape == "dict" else [*path, key]
                    visit(member, sub, shape == "list", f" {member_tag}" if member_tag else "", [])

    visit(schema, [], False, "", [])
    return found


def _doc_tables(text: str) -> dict[str, dict[str, list[str]]]:
    """Parse the reference into {section heading: {key: [type, default, meaning]}}."""
    tables: dict[str, dict[str, list[str]]] = {}
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        if match := re.fullmatch(r"## `(.+)`", line):
            rows = tables.setdefault(match.group(1), {})
        elif match := re.fullmatch(r"\| `([^`]+)` \|(.*)\|", line):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", match.group(2))]
            rows[match.group(1)] = cells
    return tables


def _bounds(prop: dict[str, Any]) -> list[str]:
    """The constraint texts the reference must show for a property (JSON-schema keywords)."""
    merged: dict[str, Any] = {}
    for alt in [prop, *prop.get("anyOf", [])]:
        merged.update(alt)
    texts = []
    if "minimum" in merged and "maximum" in merged:
        texts.append(f"{merged.pop('minimum')}\N{EN DASH}{merged.pop('maximum')}")
    words = {"minimum": "≥", "maximum": "≤", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    texts += [f"{sign} {merged[word]}" for word, sign in words.items() if word in merged]
    if merged.get("minItems") == 1 or merged.get("minLength") == 1:
        texts.append("not empty")
    return texts + ([f"`{merged['pattern']}`"] if "pattern" in merged else [])


def test_reference_documents_every_key_with_its_default() -> None:
    """Every table and key of the settings' JSON schema is in the reference, with its default."""
    expected, documented = _schema_tables(), _doc_tables(render_configuration())
    assert sorted(documented) == sorted(expected), "sections differ from the settings models"
    for heading, obj in expected.items():
        rows, required = documented[heading], set(obj.get("required", []))
        assert sorted(rows) == sorted(obj.get("properties", {})), heading
        for key, prop in obj["properties"].items():
            kind, default, meaning = rows[key]
            where = f"{heading} {key}"
            assert kind, where
            assert meaning, where
            if key in required:
                assert default == "required", where
            elif isinstance(prop.get("default"), dict) and ("$ref" in prop or "oneOf" in prop):
                # A table's default: the reference names only what differs from its own keys.
                assert default.startswith("`{"), where
                assert default.endswith("}`"), where
                for name, value in prop["default"].items():
                    if f"{name} = " in default:
                        assert f"{name} = {_toml(value)}" in default, where
            else:
                assert "default" in prop, f"{where}: no default in the schema"
                value = _toml(prop["default"])
                assert default == (value if value == "—" else f"`{value}`"), where
            for text in _bounds(prop):
                assert text in meaning, f"{where}: constraint {text!r} not in {meaning!r}"


# --- TOML in README.md and examples/ -------------------------------------------------------


def _readme_blocks() -> list[tuple[str, str]]:
    """Every ```toml block of the README with the title of the section it is in."""
    blocks, title = [], ""
    fence = r"^```(\w*)\n(.*?)^```[ \t]*$|^(#{1,6} [^\n]*)$"
    for match in re.finditer(fence, README, re.M | re.S):
        if match.group(3):
            title = match.group(3).lstrip("# ")
        elif match.group(1) == "toml":
            blocks.append((title, match.group(2)))
    return blocks


def _as_config(data: dict[str, Any]) -> dict[str, Any] | None:
    """A complete config, or a fragment of one section merged into the minimal config ({})."""
    fields = Settings.model_fields
    if set(data) <= {field.alias or name for name, field in fields.items()}:
        return data
    for name, field in fields.items():
        listed = get_origin(field.annotation) is list
        model = get_args(field.annotation)[0] if listed else field.annotation
        if (
            isinstance(model, type)
            and issubclass(model, BaseModel)
            and set(data) <= set(model.model_fields)
        ):
            item = {"name": "example", **data} if "name" in model.model_fields else data
            return {name: [item] if listed else data}
    return None


README_BLOCKS = _readme_blocks()


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("title", "block"),
    README_BLOCKS,
    ids=[f"{i}-{t[:24]}" for i, (t, _) in enumerate(README_BLOCKS)],
)
def test_readme_toml_block_is_valid_configuration(title: str, block: str, tmp_path: Path) -> None:
    """Each README TOML block parses, and validates as (a fragment of) a configuration."""
    data = tomllib.loads(block)
    config = _as_config(data)
    if config is None:
        assert "Worked example" not in title, "the worked example must be a complete config"
        pytest.skip(f"not a configuration fragment: {sorted(data)}")
    tls = config.get("broker", {}).get("tls")
    if isinstance(tls, dict):
        # The example's certificate paths are the reader's; stand-ins that exist validate.
        for key in ("ca", "cert", "key"):
            if key in tls:
                stand_in = tmp_path / key
                stand_in.write_text("stand-in")
                tls[key] = str(stand_in)
    Settings(**config)


@pytest.mark.usefixtures("clean_env")
def test_readme_commented_alternatives_are_valid() -> None:
    """A commented-out `# key = value` alternative of an active key in a README block validates."""
    tried = 0
    for _, block in README_BLOCKS:
        for line in block.splitlines():
            match = re.fullmatch(r"# (\w+) = .*", line)
            active = [ln for ln in block.splitlines() if match and ln.startswith(f"{match[1]} = ")]
            if match and len(active) == 1:
                config = _as_config(tomllib.loads(block.replace(active[0], line[2:])))
                assert config is not None, line
                Settings(**config)
                tried += 1
    assert tried >= 1, "the README shows the action alternatives as commented-out lines"


def test_readme_worked_example_is_there() -> None:
    """The worked example is a TOML block (validated by the test above, never skipped)."""
    assert any("Worked example" in title for title, _ in README_BLOCKS)


@pytest.mark.usefixtures("clean_env")
def test_example_config_validates() -> None:
    """examples/presence.toml parses and validates as a whole configuration."""
    data = tomllib.loads((ROOT / "examples" / "presence.toml").read_text(encoding="utf-8"))
    assert _as_config(data) == data
    Settings(**data)


# --- docker-compose.yml --------------------------------------------------------------------
# PyYAML is not a dependency: a strict reader for the YAML subset compose files here use
# (block mappings and sequences, plain/quoted scalars, flow lists, comments). Anything else
# (anchors, tags, block scalars, flow mappings, tabs, duplicate keys) fails loudly.


def _uncomment(line: str) -> str:
    """The line without a trailing `# comment` (a # outside quotes, after a space or at start)."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[:index]
    return line


def _split_key(text: str) -> tuple[str, str] | None:
    """`key: rest` -> (key, rest); None when the text is not a mapping entry."""
    quote = ""
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'" and index == 0:
            quote = char
        elif char == ":" and (index + 1 == len(text) or text[index + 1] == " "):
            return text[:index].strip(), text[index + 1 :].strip()
    return None


def _flow_items(inner: str) -> list[str]:
    """The elements of a flow list `[a, "b"]` (commas inside quotes do not split)."""
    items, current, quote = [], "", ""
    for char in inner:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == ",":
            items.append(current.strip())
            current = ""
            continue
        current += char
    if current.strip() or items:
        items.append(current.strip())
    if quote or not all(items):
        raise ValueError(f"bad flow list: [{inner}]")
    return items


def _scalar(text: str) -> Any:
    """A plain, quoted or flow-list scalar (plain ones stay strings)."""
    if text[0] in "&*!|>%@`" or (text[0] == "{" and text != "{}"):
        raise ValueError(f"unsupported YAML: {text!r}")
    if text == "{}":
        return {}
    if text[0] == '"':
        if not text.endswith('"') or len(text) < 2:
            raise ValueError(f"bad quoted string: {text!r}")
        return json.loads(text)
    if text[0] == "'":
        if not text.endswith("'") or len(text) < 2:
            raise ValueError(f"bad quoted string: {text!r}")
        return text[1:-1].replace("''", "'")
    if text[0] == "[":
        if not text.endswith("]"):
            raise ValueError(f"bad flow list: {text!r}")
        return [_scalar(item) for item in _flow_items(text[1:-1])]
    if ": " in text or text.endswith(":"):
        raise ValueError(f"unsupported YAML (nested mapping in a value): {text!r}")
    return text


def _is_item(text: str) -> bool:
    """A sequence entry: `- value` or a lone `-`."""
    return text.startswith("- ") or text == "-"


def _item(lines: list[tuple[int, int, str]], i: int, indent: int) -> tuple[Any, int]:
    """Parse the sequence entry at lines[i]; return it and the index after it."""
    number, _, text = lines[i]
    rest = text[1:].strip()
    if rest and _split_key(rest) is not None:  # "- key: value" opens a mapping entry
        lines[i] = (number, indent + len(text) - len(rest), rest)
        return _block(lines, i, lines[i][1])
    if rest:
        return _scalar(rest), i + 1
    if i + 1 < len(lines) and lines[i + 1][1] > indent:
        return _block(lines, i + 1, lines[i + 1][1])
    raise ValueError(f"line {number}: empty sequence entry")


def _block(lines: list[tuple[int, int, str]], i: int, indent: int) -> tuple[Any, int]:
    """Parse the mapping or sequence starting at lines[i] (all its lines at `indent`)."""
    sequence = _is_item(lines[i][2])
    items: list[Any] = []
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i][1] == indent:
        number, _, text = lines[i]
        if sequence != _is_item(text):
            raise ValueError(f"line {number}: mixed sequence and mapping")
        if sequence:
            value, i = _item(lines, i, indent)
            items.append(value)
            continue
        entry = _split_key(text)
        if entry is None or not entry[0]:
            raise ValueError(f"line {number}: expected `key: value`")
        key, rest = str(_scalar(entry[0])), entry[1]
        if key in mapping:
            raise ValueError(f"line {number}: duplicate key {key!r}")
        i += 1
        nested = i < len(lines) and (
            lines[i][1] > indent or (lines[i][1] == indent and _is_item(lines[i][2]))
        )
        if rest:
            mapping[key] = _scalar(rest)
        elif nested:
            mapping[key], i = _block(lines, i, lines[i][1])
        else:
            mapping[key] = None
    if i < len(lines) and lines[i][1] > indent:
        raise ValueError(f"line {lines[i][0]}: unexpected indentation")
    return (items if sequence else mapping), i


def parse_yaml(text: str) -> Any:
    """Parse the YAML subset (see above) strictly."""
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = _uncomment(raw).rstrip()
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise ValueError(f"line {number}: tab in indentation")
        if line.strip() in ("---", "..."):
            raise ValueError(f"line {number}: multi-document YAML")
        if line.strip():
            lines.append((number, len(line) - len(line.lstrip(" ")), line.strip()))
    value, end = _block(lines, 0, lines[0][1]) if lines else (None, 0)
    if end != len(lines):
        raise ValueError(f"line {lines[end][0]}: unexpected dedent")
    return value


def test_yaml_reader_is_strict() -> None:
    """The compose reader parses its subset and refuses what it does not understand."""
    text = 'a:\n  b: [x, "y z", \'q\']  # c\n  c:\n  - one\n  - k: v\n    l: w\nd: "#1"\n'
    assert parse_yaml(text) == {
        "a": {"b": ["x", "y z", "q"], "c": ["one", {"k": "v", "l": "w"}]},
        "d": "#1",
    }
    for bad in (
        "a: &x 1\n",
        "a: |\n  t\n",
        "a: 1\na: 2\n",
        "a:\n\tb: 1\n",
        "a:\n    b: 1\n  c: 2\n",
        "a: b: c\n",
        "a: [x, ]\n",
    ):
        with pytest.raises(ValueError, match=r"line \d+|unsupported|bad"):
            parse_yaml(bad)


def _services() -> dict[str, dict[str, Any]]:
    """The compose file's services (the file parsed strictly)."""
    compose = parse_yaml(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(compose, dict)
    assert isinstance(compose.get("services"), dict)
    assert compose["services"]
    return compose["services"]


def _in_repo(source: str) -> Path:
    """A host path of the compose file as a path inside the repository (never outside it)."""
    assert not source.startswith(("/", "~")), f"{source}: absolute host path, not in the repo"
    path = (ROOT / source).resolve()
    assert path.is_relative_to(ROOT), f"{source}: outside the repository"
    return path


def _mounts(service: dict[str, Any], named: set[str]) -> Iterator[tuple[Path, PurePosixPath]]:
    """Every bind mount of a service as (host path, container path); named volumes declared."""
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target, bind = volume["source"], volume["target"], volume["type"] == "bind"
        else:
            source, target, *_ = volume.split(":")
            bind = source.startswith((".", "/", "~"))
        if bind:
            yield _in_repo(source), PurePosixPath(target)
        else:
            assert source in named, f"volume {source!r} is not declared under `volumes:`"


def _container_files(args: Any) -> list[PurePosixPath]:
    """Absolute paths of files (by suffix) named in an entrypoint or command."""
    words = shlex.split(args) if isinstance(args, str) else list(args or [])
    suffixes = {".sh", ".py", ".toml", ".conf", ".json", ".yml", ".yaml", ".env"}
    return [PurePosixPath(w) for w in words if w.startswith("/") and Path(w).suffix in suffixes]


def _dockerfile_command(dockerfile: Path) -> list[str]:
    """The JSON-form ENTRYPOINT and CMD of a Dockerfile, concatenated."""
    found: dict[str, list[str]] = {}
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        word, _, rest = line.strip().partition(" ")
        if word.upper() in ("ENTRYPOINT", "CMD"):
            found[word.upper()] = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    return found.get("ENTRYPOINT", []) + found.get("CMD", [])


def test_compose_file_mounts_and_builds_only_what_the_repo_has() -> None:
    """docker-compose.yml parses; its bind mounts, build and the files its commands run exist."""
    compose = parse_yaml(COMPOSE.read_text(encoding="utf-8"))
    named = set(compose.get("volumes") or {})
    checked = 0
    for name, service in _services().items():
        mounts = list(_mounts(service, named))
        for host, _ in mounts:
            assert host.exists(), f"{name}: mounts {host.relative_to(ROOT)}, which does not exist"
            checked += 1
        args = [
            *_container_files(service.get("entrypoint")),
            *_container_files(service.get("command")),
        ]
        build = service.get("build")
        if build is not None:
            context = _in_repo(build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / (
                build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
            )
            assert dockerfile.is_file(), f"{name}: {dockerfile.relative_to(ROOT)} does not exist"
            if "command" not in service and "entrypoint" not in service:
                args += _container_files(_dockerfile_command(dockerfile))
        if (
            str(service.get("image", "")).startswith("eclipse-mosquitto")
            and "command" not in service
        ):
            args.append(PurePosixPath("/mosquitto/config/mosquitto.conf"))  # the image's default
        for path in args:
            hosts = [
                host / path.relative_to(target)
                for host, target in mounts
                if path.is_relative_to(target)
            ]
            assert hosts, f"{name}: {path} is not mounted from the repository"
            assert hosts[-1].is_file(), (
                f"{name}: {path} -> {hosts[-1].relative_to(ROOT)} is missing"
            )
            checked += 1
    assert checked >= 4


def test_compose_required_variables_are_in_env_example() -> None:
    """Every `${VAR:?...}` the compose file requires is set in .env.example."""
    required = set(re.findall(r"\$\{(\w+):?\?", COMPOSE.read_text(encoding="utf-8")))
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    defined = set(re.findall(r"^(\w+)=", example, re.M))
    assert required
    assert required <= defined, f"missing in .env.example: {sorted(required - defined)}"


# --- contrib/systemd -----------------------------------------------------------------------


def _unit_sections(path: Path) -> dict[str, dict[str, str]]:
    """A unit file as {section: {key: value}} (comments and blank lines dropped)."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if match := re.fullmatch(r"\[(\w+)\]", line):
            current = sections.setdefault(match.group(1), {})
        else:
            key, sep, value = line.partition("=")
            assert current is not None, f"{path.name}: {line!r} before any [section]"
            assert sep, f"{path.name}: stray line {line!r}"
            current[key.strip()] = value.strip()
    return sections


def test_systemd_units_are_shipped() -> None:
    """contrib/systemd has the monitor unit and the `presence run` template unit."""
    assert {unit.name for unit in UNITS} >= {"presence-monitor.service", "presence-run@.service"}


@pytest.mark.parametrize("unit", UNITS, ids=[unit.name for unit in UNITS])
def test_systemd_unit_runs_presence(unit: Path) -> None:
    """A unit has [Unit], [Service], [Install], and ExecStart runs its `presence` subcommand."""
    sections = _unit_sections(unit)
    assert {"Unit", "Service", "Install"} <= set(sections), unit.name
    command = re.fullmatch(r"presence-(\w+)@?\.service", unit.name)
    assert command is not None, unit.name
    exec_start = sections["Service"].get("ExecStart", "")
    assert re.search(rf"(^|/)presence {command.group(1)}( |$)", exec_start), exec_start
    assert sections["Install"].get("WantedBy"), unit.name
    if unit.name == "presence-run@.service":
        assert sections["Service"].get("Restart") == "on-failure"
