"""Every setting of cog-pipeline, declared once: the table that the TOML file, the flags, the environment,
`config show` and the docs' settings table are all read from.

A setting is one field of a section dataclass, declared with :func:`setting`: its type (the annotation), its
default, its bounds or choices, its flag, its environment variable and its doc line. Nothing else names a
default. Adding a setting is one field here, plus the code that uses it::

    @dataclass(frozen=True)
    class Local:
        workers: int = setting(0, "Worker processes of the local engine (0: one per CPU).", minimum=0, flag="--workers")

`load_config(path, flags)` layers, lowest first: the defaults, the TOML file (``[local] workers = 2``), the
environment (for settings that declare a variable), then the flags given. `show()` prints the result as valid
TOML, each value with where it came from. `settings_table()` is the reference table in docs/configuration.md.
`click_options()` gives a command every declared flag. A bad value is a one-line ``ConfigError`` naming the
setting. Secrets never belong here (S3 keys are files named by -a/-s).

Besides the sections, four free-form tables: ``[pegasus.properties]`` and ``[condor.profiles]`` (strings, written
as given), ``[manifests."<glob>"]`` ([resources] per manifest) and ``[profile]`` (the conversion profile by name,
``transformations/profile.py``, which declares its own settings because the converter ships on its own).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser as a package
    import tomli as tomllib  # type: ignore[no-redef]

COMPUTE_SITE = "condorpool"
DATA_CONFIGURATIONS = ("auto", "nonsharedfs", "condorio")
CONTAINER_TYPES = ("singularity", "docker")
NOTIFY_ON = ("failures", "always", "never")
_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
_WORD = re.compile(r"\w+", re.ASCII)  # pegasus-transfer finds the bucket of an S3 URL with s3://\w+@\w+/
_SECRET_HINT = re.compile(r"secret|password|passwd|token|access[_-]?key|credential", re.IGNORECASE)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line and names the setting."""


def setting(default: Any, doc: str, *, minimum: float | None = None, choices: tuple[str, ...] = (),
            flag: str | tuple[str, ...] | None = None, env: str | None = None, hidden: bool = False,
            in_file: bool = True) -> Any:
    """One declared setting (a dataclass field). `flag`: the command-line option ("--memory", ("-m",
    "--max-running"), or "--a/--no-a" for a boolean); `env`: the environment variable that overrides the file;
    `hidden`: `config show` prints that it is set, never its value; `in_file=False`: a knob for tests and
    debugging, set by its environment variable only (read where it is used, with :func:`env_value`)."""
    meta = {"doc": doc, "minimum": minimum, "choices": choices, "flag": flag, "env": env, "hidden": hidden, "in_file": in_file}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Container:
    enabled: bool = setting(True, "Run conversions in the container image (false: on the worker's host).", flag="--container/--no-container")
    image: str = setting("", "The worker image (transformations/cog-worker.def, docs/chtc.md); \"\": no container.", flag="--container-image")
    type: str = setting("singularity", "How HTCondor runs the image.", choices=CONTAINER_TYPES, flag="--container-type")
    pegasus_home: str = setting("/opt/pegasus", "Pegasus' worker tools on the workers; \"\": ship them with every job.")
    converter_path: str = setting("/usr/local/bin/generate_cog", "Where the image has the converter (transformations/cog-worker.def installs it here).")


@dataclass(frozen=True)
class Resources:
    cores: int = setting(1, "Cores per conversion job.", minimum=1, flag="--cpus")
    memory_mb: int = setting(1024, "Memory per conversion job, MB.", minimum=1, flag="--memory")
    disk_mb: int = setting(2048, "Disk per conversion job, MB; a job asks 4 x its input + 256 MB when that is more.", minimum=1, flag="--disk")
    wall_time_s: int = setting(7200, "A conversion running longer is held with that reason, then removed (0: no limit).", minimum=0, flag="--wall-time")
    held_remove_s: int = setting(600, "A hold nobody releases fails its row after this long.", minimum=1, flag="--held-remove")


@dataclass(frozen=True)
class Data:
    configuration: str = setting("auto", "Pegasus data configuration; auto: nonsharedfs for S3 buckets, condorio for folders.", choices=DATA_CONFIGURATIONS, flag="--data-configuration")
    bypass_input_staging: bool = setting(True, "nonsharedfs: workers read inputs straight from S3 (no image on the access point).")


@dataclass(frozen=True)
class S3:
    site: str = setting("storage", "Pegasus site name of the object store (word characters only).", flag="--s3-site")
    identity: str = setting("cog", "User part of s3://<identity>@<site>/ and the credentials section (word characters only).", flag="--identity")


@dataclass(frozen=True)
class Dagman:
    retries: int = setting(3, "Retries of a transient failure (conversions: held and released with backoff).", minimum=0, flag="--retries")
    max_running: int = setting(10000, "Most conversion jobs running at once per workflow (DAGMan maxjobs).", minimum=1, flag=("-m", "--max-running"))


@dataclass(frozen=True)
class Transfers:
    max_transfers: int = setting(40, "Most concurrent S3 transfers (stage-in + stage-out jobs x threads).", minimum=1, flag="--max-transfers")
    threads: int = setting(4, "Parallel transfers inside one transfer job.", minimum=1, flag="--transfer-threads")
    attempts: int = setting(3, "pegasus-transfer attempts per file.", minimum=1, flag="--transfer-attempts")


@dataclass(frozen=True)
class Backoff:
    base_s: int = setting(60, "A held job is first released after this long; then twice as long each time.", minimum=1, flag="--backoff-base")
    max_s: int = setting(3600, "Cap on the release delay.", minimum=1, flag="--backoff-max")
    releases: int = setting(3, "Releases of a held transfer job before it is removed (conversions: dagman.retries).", minimum=0, flag="--backoff-releases")


@dataclass(frozen=True)
class Clustering:
    size: int = setting(0, "Images per clustered HTCondor job (0: one job per image).", minimum=0, flag="--cluster-size")


@dataclass(frozen=True)
class Local:
    workers: int = setting(0, "Worker processes of the local engine (0: one per CPU).", minimum=0, flag="--workers")
    job_timeout_s: float = setting(3600.0, "Local engine: a job attempt running longer is killed and its row failed (0: no limit).", minimum=0, flag="--job-timeout", env="COG_PIPELINE_JOB_TIMEOUT")
    max_pixels: int = setting(6_400_000_000, "Local engine: fail a row whose width x height x bands x bytes per sample exceeds this, before converting (0: no limit).", minimum=0, flag="--max-pixels", env="COG_PIPELINE_MAX_PIXELS")
    in_process: bool = setting(True, "Local engine: run the converter and the END hook in its own processes' Python (false: spawn them as Pegasus would).", env="COG_PIPELINE_LOCAL_INPROCESS", in_file=False)


@dataclass(frozen=True)
class Publish:
    stac: bool = setting(False, "Write a STAC Item beside each COG and a Collection per manifest (needs the stac extra).", flag="--stac/--no-stac")
    stac_base_url: str = setting("", "The STAC records' hrefs are under this http(s) URL, not s3:// (\"\": s3://).", flag="--stac-base-url")


@dataclass(frozen=True)
class Claim:
    stale_marker_age_s: float = setting(600.0, "A claim marker not renewed for this long is abandoned and taken over.", minimum=1, env="COG_PIPELINE_STALE_MARKER_AGE", in_file=False)


@dataclass(frozen=True)
class Crondor:
    schedule: str = setting("*/15 * * * *", "When the Crondor's ticks run: cron syntax, minute hour day-of-month month day-of-week.", flag="--schedule")


@dataclass(frozen=True)
class Notify:
    on: str = setting("failures", "When to tell: after a tick with failed rows or errors, after every tick, never.", choices=NOTIFY_ON)
    email_to: str = setting("", "Comma-separated addresses (\"\": no email).")
    email_from: str = setting("", "Sender (\"\": cog-pipeline@<this host>).")
    smtp_host: str = setting("localhost", "The mail server (the access point's MTA).")
    smtp_port: int = setting(25, "Its port.", minimum=1)
    webhook_url: str = setting("", "POSTed the tick's JSON line (\"\": none); may hold a token, so never printed.", hidden=True)
    timeout_s: int = setting(10, "Seconds to wait for the mail server or the webhook.", minimum=1)
    prometheus_textfile: str = setting("", "A node_exporter textfile (.prom) rewritten every tick (\"\": none).")


SECTIONS: dict[str, type] = {
    "container": Container, "resources": Resources, "data": Data, "s3": S3, "dagman": Dagman, "transfers": Transfers,
    "backoff": Backoff, "clustering": Clustering, "local": Local, "publish": Publish, "claim": Claim, "crondor": Crondor,
    "notify": Notify,
}
FREE_TABLES = ("pegasus.properties", "condor.profiles", "manifests", "profile")


@dataclass(frozen=True)
class Setting:
    """One declared setting, as the table lists it."""

    section: str
    name: str
    type: type
    default: Any
    doc: str
    minimum: float | None
    choices: tuple[str, ...]
    flags: tuple[str, ...]
    env: str | None
    hidden: bool
    in_file: bool

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def param(self) -> str | None:
        """The click parameter name of its flag ("--max-running" -> max_running)."""
        if not self.flags:
            return None
        long = [f for f in self.flags[-1].split("/") if f.startswith("--")][0]
        return long[2:].replace("-", "_")


def settings() -> Iterator[Setting]:
    """Every declared setting, in the order of the table."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            meta = f.metadata
            flag = meta["flag"]
            flags = () if flag is None else (flag,) if isinstance(flag, str) else tuple(flag)
            yield Setting(section, f.name, _TYPES[str(f.type)], f.default, meta["doc"], meta["minimum"], meta["choices"],
                          flags, meta["env"], meta["hidden"], meta["in_file"])


SETTINGS: dict[str, Setting] = {s.dotted: s for s in settings()}


@dataclass(frozen=True)
class PipelineConfig:
    container: Container = field(default_factory=Container)
    resources: Resources = field(default_factory=Resources)
    data: Data = field(default_factory=Data)
    s3: S3 = field(default_factory=S3)
    dagman: Dagman = field(default_factory=Dagman)
    transfers: Transfers = field(default_factory=Transfers)
    backoff: Backoff = field(default_factory=Backoff)
    clustering: Clustering = field(default_factory=Clustering)
    local: Local = field(default_factory=Local)
    publish: Publish = field(default_factory=Publish)
    claim: Claim = field(default_factory=Claim)
    crondor: Crondor = field(default_factory=Crondor)
    notify: Notify = field(default_factory=Notify)
    pegasus_properties: dict[str, str] = field(default_factory=dict)
    condor_profiles: dict[str, str] = field(default_factory=dict)
    # [manifests."<glob>"]: [resources] for the manifests whose key matches the glob (the first match wins)
    manifests: dict[str, Resources] = field(default_factory=dict)
    profile: dict[str, str] = field(default_factory=dict)  # conversion profile by name (transformations/profile.py)
    source: str | None = None  # the file it was read from (None: defaults only)
    origins: dict[str, str] = field(default_factory=dict)  # dotted setting -> where its value came from (not "default")

    def value(self, dotted: str) -> Any:
        section, _, name = dotted.partition(".")
        return getattr(getattr(self, section), name)

    def resources_for(self, manifest_key: str) -> Resources:
        """The [resources] a manifest's jobs request: its first matching [manifests."<glob>"], else the default."""
        return next((res for glob, res in self.manifests.items() if fnmatchcase(manifest_key, glob)), self.resources)

    @property
    def container_image(self) -> str:
        """The image to run conversions in, or "" for none."""
        return self.container.image if self.container.enabled else ""


# ---------------------------------------------------------------------------------------------------------------
# Reading values


def _check(item: Setting, value: Any, where: str = "") -> Any:
    """`value` as the setting's type, within its bounds; ConfigError naming the setting otherwise."""
    name = item.dotted + where
    if item.type is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, not {value!r}")
        return value
    if item.type in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (item.type is int and not isinstance(value, int)):
            raise ConfigError(f"{name} must be a {'whole ' if item.type is int else ''}number, not {value!r}")
        if item.minimum is not None and value < item.minimum:
            raise ConfigError(f"{name} must be >= {item.minimum:g}, not {value}")
        return item.type(value)
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, not {value!r}")
    if item.choices and value not in item.choices:
        raise ConfigError(f"{name} must be one of {', '.join(item.choices)}, not {value!r}")
    return value


def _from_text(item: Setting, text: str) -> Any:
    """An environment variable's text as the setting's value."""
    text = text.strip()
    try:
        if item.type is bool:
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return text.lower() in ("1", "true", "yes")
        if item.type in (int, float):
            return item.type(text)
    except ValueError:
        raise ConfigError(f"{item.dotted} (env {item.env}={text[:40]!r}) must be a {item.type.__name__}") from None
    return text


def env_value(dotted: str, environ: Mapping[str, str] | None = None) -> Any:
    """A setting's value from its environment variable, else its default: for the code that runs where no
    configuration was loaded (a pool worker, a converter's environment). A bad value is a ConfigError."""
    item = SETTINGS[dotted]
    text = (os.environ if environ is None else environ).get(item.env or "", "")
    return _check(item, _from_text(item, text), f" (env {item.env})") if text.strip() else item.default


def _section_values(name: str, table: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    values = dict(base or {})
    for key, value in table.items():
        item = SETTINGS.get(f"{name}.{key}")
        if item is None:
            known = ", ".join(s.name for s in SETTINGS.values() if s.section == name and s.in_file)
            raise ConfigError(f"{name}.{key} is not a setting (known: {known})")
        if not item.in_file:
            raise ConfigError(f"{name}.{key} is set by the environment variable {item.env} only")
        values[key] = _check(item, value)
    return values


def _string_table(name: str, table: Any) -> dict[str, str]:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table of strings")
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            raise ConfigError(f"{name}.{key} must be a value, not a table (quote dotted names: \"{key}.x\" = ...)")
        out[str(key)] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def load_config(path: Path | str | None, flags: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> PipelineConfig:
    """The effective configuration: defaults, then the TOML file at `path`, then the environment, then `flags`.

    `flags` maps dotted settings to the values given on the command line (``{"resources.memory_mb": 4096}``,
    ``"profile.compress": "DEFLATE"``); None means "not given". `environ` defaults to os.environ.
    """
    environ = os.environ if environ is None else environ
    doc = _read(Path(path)) if path is not None else {}
    unknown = set(doc) - set(SECTIONS) - {"pegasus", "condor", "manifests", "profile"}
    if unknown:
        raise ConfigError(f"unknown section [{sorted(unknown)[0]}] (known: {', '.join([*SECTIONS, *FREE_TABLES])})")
    origins: dict[str, str] = {}
    values = {name: _section_values(name, doc.get(name, {})) for name in SECTIONS}
    for name, table in values.items():
        origins.update({f"{name}.{key}": f"file {path}" for key in table})
    for item in SETTINGS.values():
        text = environ.get(item.env or "", "")
        if text.strip():  # environment-only settings too: a bad value is one line now, not a failure mid-run
            values[item.section][item.name] = _check(item, _from_text(item, text), f" (env {item.env})")
            origins[item.dotted] = f"env {item.env}"
    profile = _string_table("profile", doc.get("profile", {}))
    for dotted, value in (flags or {}).items():
        if value is None:
            continue
        if dotted.startswith("profile."):
            profile[dotted.partition(".")[2]] = str(value)
            origins[dotted] = "flag --cog-profile"
            continue
        item = SETTINGS.get(dotted)
        if item is None:
            raise ConfigError(f"{dotted} is not a setting")
        values[item.section][item.name] = _check(item, value)
        origins[dotted] = f"flag {item.flags[-1].split('/')[0] if item.flags else dotted}"
    extras = {}
    for outer, inner in (("pegasus", "properties"), ("condor", "profiles")):
        table = doc.get(outer, {})
        if not isinstance(table, dict) or set(table) - {inner}:
            raise ConfigError(f"[{outer}] only holds the table [{outer}.{inner}]")
        extras[f"{outer}_{inner}"] = _string_table(f"{outer}.{inner}", table.get(inner, {}))
    manifests = doc.get("manifests", {})
    if not isinstance(manifests, dict) or any(not isinstance(t, dict) for t in manifests.values()):
        raise ConfigError('[manifests] holds one table per manifest glob: [manifests."Counties/Big/*"]')
    sections = {name: SECTIONS[name](**table) for name, table in values.items()}
    base = dataclasses.asdict(sections["resources"])
    per_manifest = {glob: Resources(**_section_values("resources", table, base)) for glob, table in manifests.items()}
    _check_profile(profile)
    config = PipelineConfig(**sections, **extras, manifests=per_manifest, profile=profile,
                            source=str(path) if path is not None else None, origins=origins)
    _validate(config)
    return config


def _check_profile(profile: dict[str, str]) -> None:
    from cog_pipeline.transformations.profile import with_overrides

    try:
        with_overrides(f"{k}={v}" for k, v in profile.items())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _validate(config: PipelineConfig) -> None:
    """The rules between values, or on a value's form, that a type and a bound cannot say."""
    for name in ("site", "identity"):
        value = getattr(config.s3, name)
        if not _WORD.fullmatch(value):
            raise ConfigError(f"s3.{name} {value!r} must be word characters only (letters, digits, _): pegasus-transfer matches s3://\\w+@\\w+/")
    if config.s3.site in ("local", COMPUTE_SITE):
        raise ConfigError(f"s3.site must not reuse the site name {config.s3.site!r}")
    if config.notify.webhook_url and not config.notify.webhook_url.startswith(("http://", "https://")):
        raise ConfigError("notify.webhook_url must be an http:// or https:// URL")
    if config.publish.stac_base_url and not config.publish.stac_base_url.startswith(("http://", "https://")):
        raise ConfigError("publish.stac_base_url must be an http:// or https:// URL")
    if config.backoff.max_s < config.backoff.base_s:
        raise ConfigError(f"backoff.max_s ({config.backoff.max_s}) must be >= backoff.base_s ({config.backoff.base_s})")
    from cog_pipeline.crondor.schedule import ScheduleError, cron_fields

    try:
        cron_fields(config.crondor.schedule)
    except ScheduleError as exc:
        raise ConfigError(f"crondor.schedule (--schedule) {exc}") from None


# ---------------------------------------------------------------------------------------------------------------
# Writing them out: `config show` (TOML) and the docs' table


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def show(config: PipelineConfig) -> str:
    """The effective settings as valid TOML, each commented with where its value came from; never a secret."""
    lines = [f"# cog-pipeline settings: the defaults, then {config.source or 'no file'}, then the environment, then the flags"]
    for section in SECTIONS:
        lines.append(f"\n[{section}]")
        for item in (s for s in SETTINGS.values() if s.section == section):
            value = config.value(item.dotted)
            shown = _toml_value("<set, hidden>" if item.hidden and value else value)
            if not item.in_file:  # read where it is used, from the environment only
                lines.append(f"# {item.name} = {shown}  # env {item.env} only")
                continue
            lines.append(f"{item.name} = {shown}  # {config.origins.get(item.dotted, 'default')}")
    for label, table in (("pegasus.properties", config.pegasus_properties), ("condor.profiles", config.condor_profiles),
                         ("profile", config.profile)):
        lines.append(f"\n[{label}]")
        for key, value in sorted(table.items()):
            lines.append(f"{_toml_key(key)} = {_toml_value('<hidden>' if _SECRET_HINT.search(key) else value)}")
    for glob, res in config.manifests.items():
        lines.append(f"\n[manifests.{_toml_key(glob)}]")
        lines.extend(f"{f.name} = {_toml_value(getattr(res, f.name))}" for f in dataclasses.fields(Resources))
    return "\n".join(lines) + "\n"


def settings_table() -> str:
    """The reference table of docs/configuration.md (a test keeps the two equal)."""
    rows = ["| setting | default | flag | environment | meaning |", "| --- | --- | --- | --- | --- |"]
    for item in SETTINGS.values():
        allowed = f" One of {', '.join(item.choices)}." if item.choices else ""
        flag = " ".join(f"`{f}`" for f in item.flags) if item.in_file else "(environment only)"
        rows.append(f"| `{item.dotted}` | `{_toml_value(item.default)}` | {flag} | {f'`{item.env}`' if item.env else ''} | {item.doc}{allowed} |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Flags


def click_options(*, sections: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator giving a click command the flag of every declared setting (of `sections`, all by default).
    A flag not given is None: the file's or the default value stays (read them with :func:`flag_values`)."""
    import click

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for item in reversed(list(SETTINGS.values())):
            if not item.flags or (sections is not None and item.section not in sections) or item.section in exclude:
                continue
            kind: Any = item.type
            if item.choices:
                kind = click.Choice(item.choices)
            elif item.type is int:
                kind = click.IntRange(min=item.minimum)
            elif item.type is float:
                kind = click.FloatRange(min=item.minimum)
            extra: dict[str, Any] = {"is_flag": True} if item.type is bool and "/" not in item.flags[-1] else {}
            if item.type is not bool:
                extra["type"] = kind
            func = click.option(*item.flags, item.param, default=None, help=f"{item.doc} [{item.dotted}]", **extra)(func)
        return func

    return decorate


def flag_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted settings of the flags that were given (click's parameters), and --cog-profile NAME=VALUE."""
    given = {item.dotted: params[item.param] for item in SETTINGS.values()
             if item.param and params.get(item.param) is not None}
    for text in params.get("cog_profile") or ():
        name, _, value = str(text).partition("=")
        given[f"profile.{name.strip().lower()}"] = value.strip()
    return given


def flag_argv(given: Mapping[str, Any]) -> list[str]:
    """Flags that give these settings again (for the Crondor's tick): the inverse of `flag_values`."""
    argv: list[str] = []
    for dotted, value in given.items():
        if dotted.startswith("profile."):
            argv += ["--cog-profile", f"{dotted.partition('.')[2]}={value}"]
            continue
        item = SETTINGS[dotted]
        on, _, off = item.flags[-1].partition("/")
        if item.type is bool:
            if value or off:
                argv.append(on if value else off)
        else:
            argv += [on.split()[0], str(value)]
    return argv
