"""One production configuration file: every setting the Pegasus path needs, declared once.

A TOML profile (stdlib ``tomllib``), in the spirit of rio-cogeo's profiles: named sections of plain values,
every one with a default, so an empty file (or none) is the documented default configuration::

    [container]
    image = "osdf:///chtc/staging/NETID/cog-worker.sif"   # default "": run without a container
    type = "singularity"
    pegasus_home = "/opt/pegasus"   # Pegasus' worker tools on the workers; "": ship them with every job

    [resources]
    cores = 1
    memory_mb = 1024
    disk_mb = 2048           # at least; a job gets more when its input is large (4 x its size + 256 MB)
    wall_time_s = 7200       # 0: no limit; else a conversion running longer is held with that reason
    held_remove_s = 600      # a hold nobody releases fails its row, with the hold reason, after this long

    [manifests."Counties/Big/*"]   # per manifest (glob on the manifest's key): any [resources] setting
    memory_mb = 4096

    [data]
    configuration = "auto"   # nonsharedfs for S3 buckets, condorio for folder buckets; or either by name
    bypass_input_staging = true     # nonsharedfs: workers read inputs straight from S3

    [s3]
    site = "storage"
    identity = "cog"

    [dagman]
    retries = 3
    max_running = 10000

    [transfers]
    max_transfers = 40
    threads = 4
    attempts = 3

    [backoff]                # a transient failure's hold is released after base_s * 2^(n-1), at most max_s
    base_s = 60
    max_s = 3600
    releases = 3             # transfer jobs; conversions are released up to dagman.retries times

    [clustering]
    size = 0                 # 0: no clustering

    [crondor]
    schedule = "*/15 * * * *"   # when the Crondor's ticks run (crondor start --schedule overrides it)

    [notify]                 # after a tick with failed rows (docs/operator.md)
    on = "failures"          # or "always", "never"
    email_to = ""            # "ops@example.org, gis@example.org": mail through smtp_host:smtp_port
    smtp_host = "localhost"
    smtp_port = 25
    webhook_url = ""         # POSTed the tick's JSON line
    prometheus_textfile = "" # counts for node_exporter's textfile collector

    [profile]                # the conversion profile, by name (transformations/profile.py)
    compress = "LZW"
    jpeg_quality = 80

    [pegasus.properties]     # extra properties, written as given
    "pegasus.mode" = "production"

    [condor.profiles]        # extra condor profiles for the conversion jobs
    "+ProjectName" = '"cog"'

Command-line flags override the file (``load_config(path, overrides)``). A bad value is a one-line
``ConfigError`` naming the setting. Secrets never belong here (key files are CLI options), so ``show()`` can
print everything; it still masks any key that looks like a secret in the free-form tables.
Why nonsharedfs is the default: with condorio each image crosses the access point twice (S3 -> access point
-> worker); with nonsharedfs + bypass the worker's PegasusLite reads it from S3 and the access point holds no
image bytes (issue 9).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser as a package
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_IMAGE = ""  # the operator's published worker image (transformations/cog-worker.def; docs/chtc.md)
DATA_CONFIGURATIONS = ("auto", "nonsharedfs", "condorio")
CONTAINER_TYPES = ("singularity", "docker")
COMPUTE_SITE = "condorpool"
# pegasus-transfer finds the bucket of an S3 URL with s3://\w+@\w+/ : anything else breaks mkdir.
_WORD = re.compile(r"\w+", re.ASCII)
_SECRET_HINT = re.compile(r"secret|password|passwd|token|access[_-]?key|credential", re.IGNORECASE)


class ConfigError(ValueError):
    """A bad configuration value; the message is one line and names the setting."""


@dataclass(frozen=True)
class Container:
    enabled: bool = True
    image: str = DEFAULT_IMAGE
    type: str = "singularity"
    pegasus_home: str = "/opt/pegasus"  # Pegasus' worker tools on the workers; "": ship them with every job


@dataclass(frozen=True)
class Resources:
    cores: int = 1
    memory_mb: int = 1024
    disk_mb: int = 2048
    wall_time_s: int = 7200
    held_remove_s: int = 600


@dataclass(frozen=True)
class Data:
    configuration: str = "auto"
    bypass_input_staging: bool = True


@dataclass(frozen=True)
class S3:
    site: str = "storage"
    identity: str = "cog"


@dataclass(frozen=True)
class Dagman:
    retries: int = 3
    max_running: int = 10000


@dataclass(frozen=True)
class Transfers:
    max_transfers: int = 40
    threads: int = 4
    attempts: int = 3


@dataclass(frozen=True)
class Backoff:
    base_s: int = 60
    max_s: int = 3600
    releases: int = 3


@dataclass(frozen=True)
class Clustering:
    size: int = 0


@dataclass(frozen=True)
class Crondor:
    schedule: str = "*/15 * * * *"  # cron syntax: minute hour day-of-month month day-of-week (crondor start --schedule)


NOTIFY_ON = ("failures", "always", "never")


@dataclass(frozen=True)
class Notify:
    on: str = "failures"            # failures: a tick with failed rows or errors; always; never
    email_to: str = ""              # comma-separated addresses; "": no email
    email_from: str = ""            # "": cog-pipeline@<this host>
    smtp_host: str = "localhost"    # the access point's mail (its MTA)
    smtp_port: int = 25
    webhook_url: str = ""           # POSTed the tick's JSON line; "": no webhook. May hold a token: never printed
    timeout_s: int = 10
    prometheus_textfile: str = ""   # a node_exporter textfile (.prom) rewritten every tick; "": none


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
    crondor: Crondor = field(default_factory=Crondor)
    notify: Notify = field(default_factory=Notify)
    pegasus_properties: dict[str, str] = field(default_factory=dict)
    condor_profiles: dict[str, str] = field(default_factory=dict)
    # [manifests."<glob>"]: [resources] for the manifests whose key matches the glob (the first match wins)
    manifests: dict[str, Resources] = field(default_factory=dict)
    #: conversion profile overrides by name (transformations/profile.py); flags: --cog-profile NAME=VALUE
    profile: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # the file it was read from (None: defaults only)

    def resources_for(self, manifest_key: str) -> Resources:
        """The [resources] a manifest's jobs request: its first matching [manifests."<glob>"], else the default."""
        from fnmatch import fnmatchcase

        return next((res for glob, res in self.manifests.items() if fnmatchcase(manifest_key, glob)), self.resources)

    @property
    def container_image(self) -> str:
        """The image to run conversions in, or "" for none."""
        return self.container.image if self.container.enabled else ""


_SECTION_TYPES = {"container": Container, "resources": Resources, "data": Data, "s3": S3, "dagman": Dagman,
                  "transfers": Transfers, "backoff": Backoff, "clustering": Clustering, "notify": Notify, "crondor": Crondor}
# (section, field) -> smallest allowed value for integers
_MINIMUM = {
    ("resources", "cores"): 1, ("resources", "memory_mb"): 1, ("resources", "disk_mb"): 1, ("resources", "wall_time_s"): 0,
    ("resources", "held_remove_s"): 1,
    ("dagman", "retries"): 0, ("dagman", "max_running"): 1, ("transfers", "max_transfers"): 1, ("transfers", "threads"): 1,
    ("transfers", "attempts"): 1, ("backoff", "base_s"): 1, ("backoff", "max_s"): 1, ("backoff", "releases"): 0,
    ("clustering", "size"): 0, ("notify", "smtp_port"): 1, ("notify", "timeout_s"): 1,
}


def _check_value(section: str, name: str, value: Any, expected: Any) -> Any:
    setting = f"{section}.{name}"
    if expected is bool or expected == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{setting} must be true or false, not {value!r}")
        return value
    if expected is int or expected == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{setting} must be a whole number, not {value!r}")
        low = _MINIMUM.get((section, name), 0)
        if value < low:
            raise ConfigError(f"{setting} must be >= {low}, not {value}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{setting} must be a string, not {value!r}")
    return value


def _section(name: str, table: Any, overrides: dict[str, Any]) -> Any:
    cls = _SECTION_TYPES[name]
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{name}.{key} is not a setting (known: {', '.join(known)})")
        values[key] = value
    for dotted, value in overrides.items():
        sec, _, key = dotted.partition(".")
        if sec == name and value is not None:
            if key not in known:
                raise ConfigError(f"{dotted} is not a setting")
            values[key] = value
    checked = {k: _check_value(name, k, v, known[k].type) for k, v in values.items()}
    return cls(**checked)


def _string_table(name: str, table: Any) -> dict[str, str]:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table of strings")
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            raise ConfigError(f"{name}.{key} must be a value, not a table (quote dotted names: \"{key}.x\" = ...)")
        out[str(key)] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def _validate(config: PipelineConfig) -> None:
    for name in ("site", "identity"):
        value = getattr(config.s3, name)
        if not _WORD.fullmatch(value):
            raise ConfigError(f"s3.{name} {value!r} must be word characters only (letters, digits, _): pegasus-transfer matches s3://\\w+@\\w+/")
    if config.s3.site in ("local", COMPUTE_SITE):
        raise ConfigError(f"s3.site must not reuse the site name {config.s3.site!r}")
    if config.data.configuration not in DATA_CONFIGURATIONS:
        raise ConfigError(f"data.configuration must be one of {', '.join(DATA_CONFIGURATIONS)}, not {config.data.configuration!r}")
    if config.container.type not in CONTAINER_TYPES:
        raise ConfigError(f"container.type must be one of {', '.join(CONTAINER_TYPES)}, not {config.container.type!r}")
    if config.notify.on not in NOTIFY_ON:
        raise ConfigError(f"notify.on must be one of {', '.join(NOTIFY_ON)}, not {config.notify.on!r}")
    if config.notify.webhook_url and not config.notify.webhook_url.startswith(("http://", "https://")):
        raise ConfigError("notify.webhook_url must be an http:// or https:// URL")
    if config.backoff.max_s < config.backoff.base_s:
        raise ConfigError(f"backoff.max_s ({config.backoff.max_s}) must be >= backoff.base_s ({config.backoff.base_s})")


def _check_profile(profile: dict[str, str]) -> None:
    from .transformations.profile import with_overrides

    try:
        with_overrides(f"{k}={v}" for k, v in profile.items())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def load_config(path: Path | str | None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """The effective configuration: defaults, then the TOML file at `path`, then `overrides` (CLI flags).

    `overrides` maps dotted settings to values (``{"resources.memory_mb": 4096, "container.enabled": False}``);
    a None value means "flag not given" and leaves the file's value.
    """
    overrides = dict(overrides or {})
    doc: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    unknown = set(doc) - set(_SECTION_TYPES) - {"pegasus", "condor", "manifests", "profile"}
    if unknown:
        raise ConfigError(f"unknown section [{sorted(unknown)[0]}] (known: {', '.join([*_SECTION_TYPES, 'pegasus.properties', 'condor.profiles', 'manifests', 'profile'])})")
    for dotted in overrides:
        if dotted.partition(".")[0] not in (*_SECTION_TYPES, "profile"):
            raise ConfigError(f"{dotted} is not a setting")
    sections = {name: _section(name, doc.get(name, {}), overrides) for name in _SECTION_TYPES}
    extras = {}
    for outer, inner in (("pegasus", "properties"), ("condor", "profiles")):
        table = doc.get(outer, {})
        if not isinstance(table, dict) or set(table) - {inner}:
            raise ConfigError(f"[{outer}] only holds the table [{outer}.{inner}]")
        extras[f"{outer}_{inner}"] = _string_table(f"{outer}.{inner}", table.get(inner, {}))
    manifests = doc.get("manifests", {})
    if not isinstance(manifests, dict) or any(not isinstance(t, dict) for t in manifests.values()):
        raise ConfigError('[manifests] holds one table per manifest glob: [manifests."Counties/Big/*"]')
    base = dataclasses.asdict(sections["resources"])
    per_manifest = {glob: _section("resources", {**base, **table}, {}) for glob, table in manifests.items()}
    profile = _string_table("profile", doc.get("profile", {}))
    profile.update({k.partition(".")[2]: str(v) for k, v in overrides.items() if k.startswith("profile.")})
    _check_profile(profile)
    config = PipelineConfig(**sections, **extras, manifests=per_manifest, profile=profile,
                            source=str(path) if path is not None else None)
    _validate(config)
    return config


def _masked(key: str, value: str) -> str:
    return "<hidden>" if _SECRET_HINT.search(key) else value


def show(config: PipelineConfig) -> str:
    """The effective settings, one `section.name = value` per line (what `cog-pipeline config show` prints)."""
    lines = [f"# configuration: {config.source or 'built-in defaults'}"]
    for name in _SECTION_TYPES:
        for f in dataclasses.fields(_SECTION_TYPES[name]):
            value = getattr(getattr(config, name), f.name)
            if (name, f.name) == ("notify", "webhook_url") and value:
                value = "<set, hidden>"  # a webhook URL often carries its token
            lines.append(f"{name}.{f.name} = {value!r}")
    for label, table in (("pegasus.properties", config.pegasus_properties), ("condor.profiles", config.condor_profiles),
                         ("profile", config.profile)):
        for key, value in sorted(table.items()):
            lines.append(f"{label}.{key} = {_masked(key, value)!r}")
    for glob, res in config.manifests.items():
        for f in dataclasses.fields(Resources):
            lines.append(f"manifests.{glob!r}.{f.name} = {getattr(res, f.name)!r}")
    return "\n".join(lines)


def workflow_settings_kwargs(config: PipelineConfig) -> dict[str, Any]:
    """Keyword arguments for ``pegasus.workflow_gen.WorkflowSettings``: the generator's view of the config."""
    return {
        "retries": config.dagman.retries,
        "max_running": config.dagman.max_running,
        "max_transfers": config.transfers.max_transfers,
        "transfer_threads": config.transfers.threads,
        "transfer_attempts": config.transfers.attempts,
        "backoff_base": config.backoff.base_s,
        "backoff_max": config.backoff.max_s,
        "backoff_releases": config.backoff.releases,
        "cluster_size": config.clustering.size or None,
        "profile": tuple(f"{k}={v}" for k, v in config.profile.items()),
        "s3_site": config.s3.site,
        "identity": config.s3.identity,
        "container_image": config.container_image,
        "container_type": config.container.type,
        "worker_pegasus_home": config.container.pegasus_home,
        "cpus": config.resources.cores,
        "memory_mb": config.resources.memory_mb,
        "disk_mb": config.resources.disk_mb,
        "data_configuration": None if config.data.configuration == "auto" else config.data.configuration,
        "wall_time_s": config.resources.wall_time_s,
        "held_remove_s": config.resources.held_remove_s,
        "manifest_resources": {glob: dataclasses.asdict(res) for glob, res in config.manifests.items()},
        "extra_properties": extra_pegasus_properties(config),
        "pool_condor_profiles": condor_profiles(config),
    }


def data_configuration(config: PipelineConfig, local_mode: bool = False) -> str:
    """"auto" resolved: nonsharedfs for S3 buckets, condorio for folder buckets (one machine, no S3 to read)."""
    if config.data.configuration != "auto":
        return config.data.configuration
    return "condorio" if local_mode else "nonsharedfs"


def extra_pegasus_properties(config: PipelineConfig) -> dict[str, str]:
    """The operator's [pegasus.properties], plus bypass=false when they turned input bypass off."""
    props = {}
    if not config.data.bypass_input_staging:
        props["pegasus.transfer.bypass.input.staging"] = "false"
    props.update(config.pegasus_properties)
    return props


def pegasus_properties(config: PipelineConfig, local_mode: bool = False) -> dict[str, str]:
    """Properties the generator adds on top of its own: the data flow and the operator's extra properties.

    nonsharedfs + bypass: PegasusLite on the worker pulls each input straight from s3://.../<key>, so no image
    crosses the access point; the planner then needs ``--staging-site condorpool=<s3 site>`` (plan_args()).
    """
    configuration = data_configuration(config, local_mode)
    props = {"pegasus.data.configuration": configuration}
    if configuration == "nonsharedfs":
        props["pegasus.transfer.bypass.input.staging"] = "true" if config.data.bypass_input_staging else "false"
    props.update(config.pegasus_properties)  # the operator's word wins
    return props


def condor_profiles(config: PipelineConfig) -> dict[str, str]:
    """The operator's extra condor profiles for the conversion jobs (the generator adds its own rules)."""
    return dict(config.condor_profiles)


def plan_args(config: PipelineConfig, local_mode: bool = False) -> list[str]:
    """The pegasus-plan site arguments the data configuration needs (condorio: staging site must stay local)."""
    args = ["--sites", COMPUTE_SITE, "--output-sites", config.s3.site]
    if data_configuration(config, local_mode) == "nonsharedfs":
        args += ["--staging-site", f"{COMPUTE_SITE}={config.s3.site}"]
    if config.clustering.size:
        args += ["--cluster", "horizontal"]
    return args


# CLI flag (click / argparse destination name) -> dotted setting. Flags left at None are "not given".
FLAG_SETTINGS = {
    "retries": "dagman.retries", "max_running": "dagman.max_running", "cluster_size": "clustering.size",
    "max_transfers": "transfers.max_transfers", "transfer_threads": "transfers.threads",
    "transfer_attempts": "transfers.attempts", "backoff_base": "backoff.base_s", "backoff_max": "backoff.max_s",
    "backoff_releases": "backoff.releases", "s3_site": "s3.site", "identity": "s3.identity",
    "container_image": "container.image", "container_type": "container.type", "cpus": "resources.cores",
    "memory": "resources.memory_mb", "disk": "resources.disk_mb", "wall_time": "resources.wall_time_s",
    "held_remove": "resources.held_remove_s",
    "data_configuration": "data.configuration",
}


def overrides_from_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The dotted overrides for the flags that were given (``--no-container`` -> container.enabled = false;
    ``--container-image ''`` likewise)."""
    overrides = {FLAG_SETTINGS[name]: value for name, value in flags.items() if name in FLAG_SETTINGS and value is not None}
    if overrides.get("container.image") == "":
        del overrides["container.image"]
        overrides["container.enabled"] = False
    if flags.get("no_container"):
        overrides["container.enabled"] = False
    for item in flags.get("cog_profile") or ():
        name, _, value = str(item).partition("=")
        overrides[f"profile.{name.strip().lower()}"] = value.strip()
    return overrides
