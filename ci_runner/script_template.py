"""The user's script template (`script:` or `template:`): jinja2's SandboxedEnvironment with
StrictUndefined, every `{{ expression }}` shell-quoted by default (`| shquote` accepted, `| raw` opts
out), the context of one entry, and template errors reported at their file and line."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Mapping

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment

from ci_runner.ci import CIContext
from ci_runner.config import Config
from ci_runner.errors import ConfigError
from ci_runner.matrix import Entry
from ci_runner.reserved import TEMPLATE_NAMES

_INLINE = "<script>"


class _Quoted(str):
    """Text that is already a shell word (from `shquote`) or deliberately raw (from `raw`)."""


def shquote(value: object) -> _Quoted:
    """Jinja filter: `value` as one inert shell word."""
    return value if isinstance(value, _Quoted) else _Quoted(shlex.quote(str(value)))


def _raw(value: object) -> _Quoted:
    return _Quoted(str(value))


def template_context(config: Config, entry: Entry, ci: CIContext, passed: Mapping[str, str]) -> dict[str, Any]:
    clash = sorted(set(entry.values) & set(TEMPLATE_NAMES))
    if clash:
        raise ConfigError(
            f"{config.path}: matrix variable(s) {', '.join(clash)} clash with the template names "
            f"{', '.join(TEMPLATE_NAMES)}; rename the axis"
        )
    matrix = dict(entry.values)
    return {
        **matrix,
        "matrix": matrix,
        "entry": {"name": entry.name, "index": entry.index},
        "ci": {"sha": ci.sha, "ref": ci.ref, "repo": ci.repo_url, "run_id": ci.run_id, "provider": ci.provider},
        "env": dict(passed),
    }


@dataclass(frozen=True)
class ScriptTemplate:
    """A compiled job template and how to name its lines in error messages."""

    template: jinja2.Template
    describe: Callable[[str | None, int | None], str]

    @classmethod
    def load(cls, config: Config) -> ScriptTemplate:
        if (config.script is None) == (config.template is None):
            raise ConfigError(f"{config.path}: set exactly one of `script` and `template`")
        environment = _environment(config)
        name = _INLINE if config.script is not None else str(config.template)
        describe = _describer(config)
        try:
            template = environment.get_template(name)
        except jinja2.TemplateSyntaxError as error:
            raise ConfigError(f"{describe(error.filename, error.lineno)}: {error.message}") from error
        except jinja2.TemplateNotFound as error:
            raise ConfigError(f"{config.path}: template: file not found: {error.name}") from error
        return cls(template=template, describe=describe)

    def render(self, context: Mapping[str, Any]) -> str:
        try:
            return self.template.render(context)
        except jinja2.TemplateSyntaxError as error:  # in an included template
            raise ConfigError(f"{self.describe(error.filename, error.lineno)}: {error.message}") from error
        except jinja2.TemplateNotFound as error:  # an {% include %} of a missing file
            where = self.describe(*_template_frame(error.__traceback__))
            raise ConfigError(f"{where}: template not found: {error.name}") from error
        except ConfigError:
            raise
        except Exception as error:  # sandbox violations, undefined names, errors in expressions
            filename, lineno = _template_frame(error.__traceback__)
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            if isinstance(error, jinja2.UndefinedError):
                message += f" ({_available(context)})"
            raise ConfigError(f"{self.describe(filename, lineno)}: {message}") from error


def _environment(config: Config) -> SandboxedEnvironment:
    base = config.path.parent.resolve()

    def load(name: str) -> tuple[str, str, Callable[[], bool]] | None:
        if name == _INLINE:
            return config.script or "", str(config.path), lambda: True
        path = (Path(name) if Path(name).is_absolute() else base / name).resolve()
        if not path.is_relative_to(base):  # an absolute name, `..` or a symlink out: files of the CI runner
            raise ConfigError(f"{config.path}: template {name!r} lies outside {base}; templates (and their "
                              "includes) must be files in the config file's directory or below")
        try:
            return path.read_text(encoding="utf-8"), str(path), lambda: True
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read template: {error}") from error

    environment = SandboxedEnvironment(
        loader=jinja2.FunctionLoader(load),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=shquote,
    )
    environment.filters["shquote"] = shquote
    environment.filters["raw"] = _raw
    return environment


def _template_frame(tb: TracebackType | None) -> tuple[str | None, int | None]:
    """(file, line) of the innermost template frame of a traceback jinja2 has rewritten."""
    found: tuple[str | None, int | None] = (None, None)
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name in ("template", "top-level template code") or code.co_name.startswith("block "):
            found = (code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


def _describer(config: Config) -> Callable[[str | None, int | None], str]:
    """Names a template line: `file:line` for template files, the config file's line for inline scripts."""
    offset = _script_offset(config) if config.script is not None else None

    def describe(filename: str | None, lineno: int | None) -> str:
        if config.script is not None and filename in (None, str(config.path)):
            if lineno is None:
                return f"{config.path}: script"
            if offset is not None:
                return f"{config.path}:{offset + lineno}: script line {lineno}"
            return f"{config.path}: script line {lineno}"
        name = filename or str(config.template)
        return f"{name}:{lineno}" if lineno is not None else name

    return describe


def _script_offset(config: Config) -> int | None:
    """Line of the config file just before an inline `script: |` block's first line, if it can be found."""
    try:
        root = yaml.compose(config.path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(root, yaml.MappingNode):
        return None
    for key, value in root.value:
        if key.value == "script" and isinstance(value, yaml.ScalarNode):
            if value.style == "|" and value.value == config.script:
                return value.start_mark.line + 1  # 0-based line of `|` + 1 = 1-based line of `|`
            if value.style in (None, "", "'", '"') and "\n" not in value.value and value.value == config.script:
                return value.start_mark.line
    return None


def _available(context: Mapping[str, Any]) -> str:
    """A hint listing the template variables, for undefined-name errors."""
    names = [name for name in context if name not in TEMPLATE_NAMES] + list(TEMPLATE_NAMES)
    passed = ", ".join(context.get("env", {})) or "none"
    return f"template variables: {', '.join(names)}; env has the pass_env variables that are set: {passed}"

