"""Read what a real Pegasus/DAGMan run leaves in its submit directory, so failed rows get real reasons.

Sources, each as Pegasus 5.1 writes it (tests read real submit directories planned and run by Pegasus):

* ``braindump.yml``: the planner's facts about the run (wf_uuid, dag file, condor_log, ...);
* ``jobstate.log`` (written by pegasus-monitord): one line per DAGMan event,
  ``<ts> <job> <STATE> <condor id or exit> <site> - <sequence>``; gives each job's final state, how many
  times it was submitted (attempts), its last exit code and how often it was held / released; the
  ``INTERNAL *** DAGMAN_FINISHED <status> ***`` line says the DAG has ended and with what status;
* each job's latest kickstart record ``00/00/<job>.out.NNN`` (rotated by pegasus-exitcode, one per attempt):
  the ``- invocation: True`` YAML documents with the main job's exit status, duration, host and the
  captured stdout/stderr;
* HTCondor job event logs (``*.dag.nodes.log``, the DAG's ``condor_log`` from braindump, ``*.dag.dagman.log``), read with
  ``htcondor2.JobEventLog`` -- never with regexes -- when they exist.

Exit codes are classified the way ``pegasus-exitcode`` does: a job succeeded only when its kickstart output
has at least one invocation record and every ``status: raw`` is 0 (and no ``integrity_error``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_KICKSTART_OUT = re.compile(r"^(?P<job>.+)\.out\.(?P<n>\d{3})$")
_DAG_NODE_NAME = re.compile(r'DAGNodeName = "([^"]+)"')
_DAGMAN_FINISHED = re.compile(r"DAGMAN_FINISHED\s+(-?\d+)")
FINAL_SUCCESS = {"POST_SCRIPT_SUCCESS", "JOB_SUCCESS"}
FINAL_FAILURE = {"POST_SCRIPT_FAILURE", "JOB_FAILURE", "JOB_ABORTED"}


@dataclass
class JobState:
    """One DAG node as jobstate.log tells it."""

    name: str
    state: str = ""  # the last state seen (POST_SCRIPT_SUCCESS, POST_SCRIPT_FAILURE, EXECUTE, ...)
    attempts: int = 0  # SUBMIT events
    exit_code: int | None = None  # JOB_SUCCESS / JOB_FAILURE's code of the last attempt
    held: int = 0
    released: int = 0
    site: str | None = None
    first: int | None = None  # epoch seconds of its first and last line (how long the node took)
    last: int | None = None

    @property
    def finished(self) -> bool | None:
        """True succeeded, False failed, None not finished (yet)."""
        if self.state in FINAL_SUCCESS:
            return True
        if self.state in FINAL_FAILURE:
            return False
        return None


@dataclass
class DagEnd:
    ended: bool
    status: int | None = None  # DAGMan's exit status (0: every node succeeded)


@dataclass
class KickstartRecord:
    """The parts of a kickstart invocation record that explain a job; never its environment."""

    path: Path
    exit_code: int | None
    raw: int | None
    duration: float | None
    host: str | None
    stdout: str | None
    stderr: str | None
    classification: str  # "success" or "failure", as pegasus-exitcode decides
    reason: str | None = None  # why it is a failure (pegasus-exitcode's wording)
    transformation: str | None = None


def read_braindump(submit_dir: Path) -> dict[str, Any]:
    path = Path(submit_dir) / "braindump.yml"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return doc if isinstance(doc, dict) else {}


def read_jobstate(submit_dir: Path) -> tuple[dict[str, JobState], DagEnd]:
    """Per-job states and whether the (last started) DAG has ended, from jobstate.log."""
    jobs: dict[str, JobState] = {}
    end = DagEnd(ended=False)
    try:
        lines = (Path(submit_dir) / "jobstate.log").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return jobs, end
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        if parts[1] == "INTERNAL":
            if "DAGMAN_STARTED" in line:
                end = DagEnd(ended=False)  # a rescue DAG starts over
            elif (m := _DAGMAN_FINISHED.search(line)) is not None:
                end = DagEnd(ended=True, status=int(m.group(1)))
            continue
        job = jobs.setdefault(parts[1], JobState(parts[1]))
        if parts[0].isdigit():
            job.first = int(parts[0]) if job.first is None else job.first
            job.last = int(parts[0])
        state = parts[2]
        if state == "SUBMIT":
            job.attempts += 1
        elif state in ("JOB_SUCCESS", "JOB_FAILURE") and len(parts) > 3 and re.fullmatch(r"-?\d+", parts[3]):
            job.exit_code = int(parts[3])
        elif state == "JOB_HELD":
            job.held += 1
        elif state == "JOB_RELEASED":
            job.released += 1
        if state not in ("JOB_HELD_REASON", "SHADOW_EXCEPTION", "IMAGE_SIZE", "JOB_EVICTED"):
            job.state = state
        if len(parts) > 4:
            job.site = parts[4]
    return jobs, end


def latest_kickstart_out(submit_dir: Path, job: str) -> Path | None:
    """The job's newest rotated kickstart output (``<job>.out.NNN``, highest NNN), anywhere below the dir."""
    best: tuple[int, Path] | None = None
    for path in Path(submit_dir).rglob(f"{glob_escape(job)}.out.*"):
        m = _KICKSTART_OUT.match(path.name)
        if m and m.group("job") == job and (best is None or int(m.group("n")) > best[0]):
            best = (int(m.group("n")), path)
    return best[1] if best else None


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def kickstart_outputs(submit_dir: Path) -> dict[str, Path]:
    """Every job's newest rotated kickstart output, from one walk of the directory (not one per job)."""
    best: dict[str, tuple[int, Path]] = {}
    for path in Path(submit_dir).rglob("*.out.[0-9][0-9][0-9]"):
        m = _KICKSTART_OUT.match(path.name)
        if m and path.is_file() and (m.group("job") not in best or int(m.group("n")) > best[m.group("job")][0]):
            best[m.group("job")] = (int(m.group("n")), path)
    return {job: path for job, (_, path) in best.items()}


class _TextDates(yaml.SafeLoader):
    """Keeps timestamps as text: a record's dates are not needed and must not fail parsing."""


_TextDates.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.yaml_constructors["tag:yaml.org,2002:str"])


def _invocations(text: str) -> list[dict[str, Any]]:
    """Every parsable ``- invocation: True`` record. A PegasusLite job's output holds several (transfers,
    the main job) with ``---------------pegasus-multipart`` parts between them, so each record is parsed on
    its own; one that does not parse (truncated, garbage) is skipped."""
    chunks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines(keepends=True):
        if line.startswith("- invocation:"):
            current = [line]
            chunks.append(current)
        elif current is not None and (line[:1] in (" ", "\t") or not line.strip()):
            current.append(line)
        else:  # a multipart marker, a cluster line, another top-level item: this record has ended
            current = None
    records = []
    for chunk in chunks:
        try:
            doc = yaml.load("".join(chunk), Loader=_TextDates)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError:
            continue
        if isinstance(doc, list) and doc and isinstance(doc[0], dict) and doc[0].get("invocation") is True:
            records.append(doc[0])
    return records


def main_invocation(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The job's own invocation: the last one that is not a Pegasus helper (``pegasus::transfer`` ...)."""
    own = [r for r in records if not str(r.get("transformation") or "").startswith("pegasus::")]
    return (own or records or [{}])[-1]


def classify(text: str) -> tuple[str, str | None]:
    """("success"|"failure", reason) for kickstart output, by pegasus-exitcode's rules."""
    if not text.strip():
        return "failure", "Empty stdout"
    if "integrity_error: " in text:
        return "failure", "detected integrity creation errors in the job"
    raws = [int(m) for m in re.findall(r"raw: ([0-9]+)", text)]
    for raw in raws:
        if raw != 0:
            return "failure", f"task exited with raw status {raw}"
    if not raws:
        return "failure", "No successful kickstart records"
    return "success", None


def _exit_from_raw(raw: int | None) -> int | None:
    if raw is None:
        return None
    if raw & 0x7F:
        return -(raw & 0x7F)  # killed by a signal: negative, as subprocess reports it
    return raw >> 8


def _captured(record: Mapping[str, Any], stream: str) -> str | None:
    files = record.get("files") or {}
    entry = files.get(stream) if isinstance(files, Mapping) else None
    data = entry.get("data") if isinstance(entry, Mapping) else None
    return data if isinstance(data, str) else None


def read_kickstart(path: Path) -> KickstartRecord:
    """The main job's outcome from one kickstart .out file (the last invocation record wins)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    classification, reason = classify(text)
    rec = main_invocation(_invocations(text))
    main = rec.get("mainjob") or {}
    status = main.get("status") or {} if isinstance(main, Mapping) else {}
    raw = status.get("raw") if isinstance(status, Mapping) else None
    raw = raw if isinstance(raw, int) else None
    duration = main.get("duration", rec.get("duration")) if isinstance(main, Mapping) else rec.get("duration")
    return KickstartRecord(
        path=Path(path), exit_code=_exit_from_raw(raw), raw=raw,
        duration=float(duration) if isinstance(duration, (int, float)) else None,
        host=rec.get("hostname") if isinstance(rec.get("hostname"), str) else None,
        stdout=_captured(rec, "stdout"), stderr=_captured(rec, "stderr"),
        classification=classification, reason=reason,
        transformation=str(rec["transformation"]) if rec.get("transformation") else None,
    )


def condor_events(submit_dir: Path) -> list[dict[str, Any]]:
    """Node/hold/release events from the run's HTCondor event logs via htcondor2.JobEventLog ([] when none)."""
    try:
        import htcondor2
    except ImportError:
        return []
    brain = read_braindump(submit_dir)
    # HTCondor >= 23 DAGMan writes its nodes' events to <dag>.nodes.log; older ones to the braindump's condor_log.
    names = [brain.get("condor_log")] + [p.name for p in Path(submit_dir).glob("*.dag.nodes.log")] + [p.name for p in Path(submit_dir).glob("*.dag.dagman.log")]
    events = []
    for name in dict.fromkeys(n for n in names if n):
        path = Path(submit_dir) / name
        if not path.is_file():
            continue
        nodes: dict[tuple[int, int], str] = {}  # DAGMan names the node only in the submit event's notes
        try:
            events.extend(_log_events(htcondor2, path, name, nodes))
        except Exception:  # noqa: BLE001 - ULOG_RD_ERROR on a damaged/partial event: keep what was read
            continue
    return events


def _log_events(htcondor2: Any, path: Path, name: str, nodes: dict[tuple[int, int], str]) -> Iterator[dict[str, Any]]:
    """One event log's events, as dicts (a generator: events read before a bad one are kept)."""
    for event in htcondor2.JobEventLog(str(path)).events(stop_after=0):
        notes = event.get("LogNotes") or ""
        if notes.startswith("DAG Node: "):  # DAGMan before HTCondor 23
            nodes[(event.cluster, event.proc)] = notes[len("DAG Node: "):].strip()
        elif (m := _DAG_NODE_NAME.search(notes)) is not None:  # later: [ DAGNodeName = "..."; ... ]
            nodes[(event.cluster, event.proc)] = m.group(1)
        yield {
            "log": name, "type": event.type.name, "cluster": event.cluster, "proc": event.proc,
            "node": nodes.get((event.cluster, event.proc)), "hold_reason": event.get("HoldReason"),
            "hold_code": event.get("HoldReasonCode"), "return_value": event.get("ReturnValue"),
        }


def holds_by_node(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per DAG node: how often it was held and released, and the last hold reason (from condor_events)."""
    out: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["node"] is None or event["type"] not in ("JOB_HELD", "JOB_RELEASED"):
            continue
        entry = out.setdefault(event["node"], {"held": 0, "released": 0, "last_hold_reason": None})
        if event["type"] == "JOB_HELD":
            entry["held"] += 1
            entry["last_hold_reason"] = event["hold_reason"]
        else:
            entry["released"] += 1
    return out


@dataclass
class SubmitDir:
    path: Path
    braindump: dict[str, Any]
    jobs: dict[str, JobState]
    end: DagEnd
    kickstart: dict[str, KickstartRecord] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


def read_submit_dir(submit_dir: Path) -> SubmitDir:
    """Everything above for one submit directory (read only: nothing is written)."""
    submit_dir = Path(submit_dir)
    jobs, end = read_jobstate(submit_dir)
    kickstart = {}
    outputs = kickstart_outputs(submit_dir)
    for name in jobs:
        out = outputs.get(name)
        if out is not None:
            try:
                kickstart[name] = read_kickstart(out)
            except OSError:
                continue  # unreadable: the job is still known from jobstate.log
    return SubmitDir(submit_dir, read_braindump(submit_dir), jobs, end, kickstart, condor_events(submit_dir))


def job_counts_from_logs(submit_dir: Path) -> dict[str, int]:
    jobs, _ = read_jobstate(submit_dir)
    counts = {"total": len(jobs), "succeeded": 0, "failed": 0, "held": 0, "running": 0}
    for job in jobs.values():
        if job.finished is True:
            counts["succeeded"] += 1
        elif job.finished is False:
            counts["failed"] += 1
        elif job.state == "JOB_HELD":
            counts["held"] += 1
        else:
            counts["running"] += 1
    return counts


def pegasus_status_command() -> list[str] | None:
    """How to run the real pegasus-status here: on PATH, else the script the pegasus-wms wheel ships."""
    tool = shutil.which("pegasus-status")
    if tool is not None:
        return [tool]
    try:
        import Pegasus
    except ImportError:
        return None
    script = Path(Pegasus.__file__).parent / "cli" / "pegasus-status.py"
    return [sys.executable, str(script)] if script.is_file() else None


def job_counts(submit_dir: Path, timeout: float = 60) -> tuple[str, dict[str, Any]]:
    """("pegasus-status", its root-DAG counts) from ``pegasus-status --long --jsonrv`` when it is installed
    (``--noqueue`` where condor_q is missing: it would crash), else ("logs", counts from jobstate.log)."""
    command = pegasus_status_command()
    if command is not None:
        command += ["--long", "--jsonrv"] + ([] if shutil.which("condor_q") else ["--noqueue"]) + [str(submit_dir)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            root = json.loads(done.stdout)["dags"]["root"]
            if done.returncode == 0 and isinstance(root, dict):
                return "pegasus-status", root
        except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError):
            pass  # a crash prints a traceback, not JSON: the logs still know
    return "logs", job_counts_from_logs(submit_dir)


def dag_was_removed(submit_dir: Path) -> bool:
    """DAGMan was removed (condor_rm, pegasus-remove): its own log says it received SIGUSR1 and aborted."""
    for path in Path(submit_dir).glob("*.dag.dagman.out"):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if "Received SIGUSR1" in text and "Aborting DAG" in text:
            return True
    return False


def submit_dir_for_hook(env: Mapping[str, str], recorded: Path | None) -> Path | None:
    """The submit directory an END hook should read: PEGASUS_SUBMIT_DIR (set by pegasus-monitord for every
    workflow hook, so a workflow planned by hand still gets per-row reasons), else the one run.json recorded."""
    value = env.get("PEGASUS_SUBMIT_DIR")
    if value and Path(value).is_dir():
        return Path(value)
    return Path(recorded) if recorded is not None else None
