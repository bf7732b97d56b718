"""The Crondor's submit description: built from the checked-in template ``crondor/crondor.sub.tmpl``.

``render_description(spec)`` gives the text written to ``<work_dir>/crondor.sub`` (operators can
``condor_submit`` it by hand); ``build_submit(spec)`` gives the same description as an ``htcondor2.Submit``.
The tick's command line carries only what ``start`` was given: bucket names, the pattern, the endpoint and
region, and the *paths* of the key files; never key material, never the caller's environment wholesale.

The tick's environment is set explicitly (``tick_environment``): the project runs as this venv's
``cog-pipeline`` by absolute path, and Pegasus' tools run with the Pegasus installation's own Python
(``PEGASUS_PYTHON``, found when ``start`` runs), never with whichever ``python3`` comes first on PATH.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from cog_pipeline.config import Crondor, flag_argv

from .schedule import ScheduleError, cron_fields

TEMPLATE = Path(__file__).resolve().parent / "crondor.sub.tmpl"
DESCRIPTION_FILE = "crondor.sub"
KEY_ATTRIBUTE = "CogPipelineKey"
BATCH_PREFIX = "COG-Pipeline-Crondor-"
# Passed to the tick when set: names and paths only. Never AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
# AWS_SESSION_TOKEN (S3 keys reach the tick as -a/-s FILE paths or through ~/.aws files under HOME).
# PEGASUS_METRICS=false keeps the planner from sending usage metrics; PATH and PEGASUS_PYTHON are built by
# tick_environment.
ENVIRONMENT_NAMES = (
    "HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "PEGASUS_HOME", "PEGASUS_CREDENTIALS", "PEGASUS_METRICS", "CONDOR_CONFIG",
    "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE",
    "JAVA_HOME",
)
SYSTEM_PYTHON = "/usr/bin/python3"  # where Pegasus' own wrapper looks last (an RPM/DEB install's Python)
SECRET_NAMES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


class CrondorSpecError(ValueError):
    pass


@dataclass
class CrondorSpec:
    """What `cog-pipeline crondor start` was given; everything the tick's command line needs."""

    input_bucket: str
    output_bucket: str
    work_dir: Path
    pattern: str = "*raw.csv"
    endpoint: str | None = None
    access_key_file: Path | None = None
    secret_key_file: Path | None = None
    region: str | None = None
    retry_mode: str = "standard"
    local_root: Path | None = None
    # The setting flags given to `start` (dotted name -> value); the tick takes the rest from `config`.
    settings: dict[str, Any] = field(default_factory=dict)
    output_prefix: str | None = None  # outputs at <prefix><key> (same-bucket mode)
    replace_inputs: bool = False  # same bucket, no prefix: the operator accepts COGs replacing the sources
    aws_profile: str | None = None  # --profile: a named AWS profile (its name only; never its keys)
    config: Path | None = None  # the production configuration file: the tick reads it, flags are not copied out
    schedule: str = Crondor.schedule
    command: list[str] = field(default_factory=lambda: default_command())
    environment: dict[str, str] = field(default_factory=lambda: tick_environment())

    def validate(self) -> None:
        for name in ("input_bucket", "output_bucket", "pattern"):
            value = getattr(self, name)
            if not value or any(ch in value for ch in "\r\n\x00|"):
                raise CrondorSpecError(f"{name} must be non-empty without line breaks or '|': {value!r}")
        if not self.work_dir.is_absolute():
            raise CrondorSpecError("work_dir must be an absolute path")
        if self.config is not None and not self.config.is_absolute():
            raise CrondorSpecError("config must be an absolute path (the tick runs in the work directory)")
        try:
            cron_fields(self.schedule)
        except ScheduleError as exc:
            raise CrondorSpecError(str(exc)) from None

    @property
    def key(self) -> str:
        """Identifies the Crondor of one (input bucket, output bucket, pattern): at most one may be queued."""
        return crondor_key(self.input_bucket, self.output_bucket, self.pattern)

    @property
    def batch_name(self) -> str:
        return batch_name(self.pattern)


def crondor_key(input_bucket: str, output_bucket: str, pattern: str) -> str:
    return f"{input_bucket}|{output_bucket}|{pattern}"


def batch_name(pattern: str) -> str:
    # batch_name is one submit-language value: keep it to printable characters without quotes.
    safe = "".join(ch if ch.isprintable() and ch not in "\"'\\" else "_" for ch in pattern)
    return f"{BATCH_PREFIX}{safe}"


def default_command() -> list[str]:
    """The installed console script beside this Python (absolute), else `python -m cog_pipeline`."""
    script = Path(sys.executable).with_name("cog-pipeline")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("cog-pipeline")
    if found:
        return [str(Path(found).resolve())]
    return [sys.executable, "-m", "cog_pipeline"]


def _project_bin_dirs() -> set[str]:
    """This installation's own bin folders: its python3 lacks Pegasus' modules, so Pegasus must not pick it."""
    return {str(Path(sys.executable).parent), str(Path(sys.prefix) / "bin")}


def pegasus_python(env: dict[str, str]) -> str | None:
    """The Python the Pegasus installation's own tools need, looked for as Pegasus' wrapper does (python3 on PATH,
    then /usr/bin/python3; PATH here is without this project's venv): the first under which `pegasus-plan
    --version` passes (the planner's own preflight: YAML, GitPython), else None (also without pegasus-plan)."""
    from cog_pipeline.engines.pegasus.condor import planner_problem

    if shutil.which("pegasus-plan", path=env.get("PATH", "")) is None:
        return None
    candidates = [shutil.which("python3", path=env.get("PATH", "")), SYSTEM_PYTHON]
    for candidate in dict.fromkeys(c for c in candidates if c and os.access(c, os.X_OK)):
        if planner_problem({**env, "PEGASUS_PYTHON": candidate}) is None:
            return candidate
    return None


def tick_environment(source: dict[str, str] | None = None) -> dict[str, str]:
    """What a tick runs with: the names above as `start` saw them; PATH without this venv's bin folder (Pegasus'
    tools, condor_* and java as the operator has them); PEGASUS_PYTHON as the operator set it, else as found."""
    source = dict(os.environ if source is None else source)
    env = {name: source[name] for name in ENVIRONMENT_NAMES if source.get(name)}
    own = _project_bin_dirs()
    env["PATH"] = os.pathsep.join(d for d in source.get("PATH", "").split(os.pathsep) if d and d not in own) or "/usr/bin:/bin"
    python = source.get("PEGASUS_PYTHON") or pegasus_python({**source, "PATH": env["PATH"]})
    if python:
        env["PEGASUS_PYTHON"] = python
    return env


def scan_arguments(spec: CrondorSpec) -> list[str]:
    """`scan --engine pegasus ...` with the flags `start` was given (key FILE paths only)."""
    args = [
        "scan", "--engine", "pegasus",
        "--input-bucket", spec.input_bucket,
        "--output-bucket", spec.output_bucket,
        "-p", spec.pattern,
    ]
    if spec.endpoint:
        args += ["-e", spec.endpoint]
    if spec.access_key_file is not None:
        args += ["-a", str(spec.access_key_file)]
    if spec.secret_key_file is not None:
        args += ["-s", str(spec.secret_key_file)]
    if spec.region:
        args += ["--region", spec.region]
    if spec.retry_mode and spec.retry_mode != "standard":
        args += ["--retry-mode", spec.retry_mode]
    if spec.local_root is not None:
        args += ["--local-root", str(spec.local_root)]
    args += ["--work-dir", str(spec.work_dir)]
    if spec.config is not None:
        # The path, not its settings: editing the file changes the next tick, and the description stays short.
        args += ["--config", str(spec.config)]
    if spec.output_prefix:
        args += ["--output-prefix", spec.output_prefix]
    if spec.replace_inputs:
        args.append("--replace-inputs")
    if spec.aws_profile:
        args += ["--profile", spec.aws_profile]
    args += flag_argv(spec.settings)  # the setting flags `start` was given, as given
    args.append("--quiet")
    return args


def _quote_item(item: str) -> str:
    """One argument/environment item in the submit language's new (double-quoted) syntax."""
    if any(ch in item for ch in "\r\n\x00"):
        raise CrondorSpecError("arguments and environment values cannot contain line breaks")
    item = item.replace('"', '""')
    if item == "" or any(ch.isspace() or ch == "'" for ch in item):
        item = "'" + item.replace("'", "''") + "'"
    return item


def condor_arguments(args: list[str]) -> str:
    return '"' + " ".join(_quote_item(a) for a in args) + '"'


def condor_environment(env: dict[str, str]) -> str:
    for name in env:
        if name in SECRET_NAMES:
            raise CrondorSpecError(f"{name} is a secret and never goes into a submit description")
    return '"' + " ".join(_quote_item(f"{k}={v}") for k, v in env.items()) + '"'


def classad_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def template_values(spec: CrondorSpec) -> dict[str, str]:
    spec.validate()
    executable, *prefix = spec.command
    return {
        "executable": executable,
        "arguments": condor_arguments([*prefix, *scan_arguments(spec)]),
        "work_dir": str(spec.work_dir),
        "environment": condor_environment(spec.environment),
        "batch_name": spec.batch_name,
        "key": classad_string(spec.key),
        "schedule": " ".join(spec.schedule.split()),
        **cron_fields(spec.schedule),
    }


def render_description(spec: CrondorSpec, template: Path = TEMPLATE) -> str:
    return Template(template.read_text(encoding="utf-8")).substitute(template_values(spec))


def submit_commands(text: str) -> dict[str, str]:
    """The `name = value` commands of a submit description (comments, blank lines and `queue` left out)."""
    commands: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.lower().startswith("queue"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise CrondorSpecError(f"not a submit command: {line!r}")
        commands[name.strip()] = value.strip()
    return commands


def htcondor_module() -> Any:
    from cog_pipeline.engines.pegasus.condor import PegasusUnavailable
    from cog_pipeline.engines.pegasus.condor import htcondor_module as find

    module = find()
    if module is None:
        raise PegasusUnavailable("the HTCondor Python bindings (htcondor2) are not installed: pip install -e '.[condor]' in the checkout")
    return module


def build_submit(spec: CrondorSpec) -> Any:
    """The description as an htcondor2.Submit (the same text as crondor.sub)."""
    return htcondor_module().Submit(render_description(spec))


def write_description(spec: CrondorSpec) -> Path:
    """<work_dir>/crondor.sub, so operators can read it and `condor_submit` it by hand."""
    spec.work_dir.mkdir(parents=True, exist_ok=True)
    path = spec.work_dir / DESCRIPTION_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(render_description(spec), encoding="utf-8")
    os.replace(tmp, path)
    return path
