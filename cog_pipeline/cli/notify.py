"""Telling someone when a tick failed rows: an email through the access point's mail, and/or an HTTP webhook.

Configured in the profile's `[notify]` section (config.Notify). Sent after the tick's line is in ticks.jsonl,
so a notification never claims more than the history holds. Best effort: a mail server or webhook that does
not answer costs one warning line, never the tick. The webhook URL may carry a token, so messages name it
only as "the webhook"; SMTP authentication is left to the access point's MTA (no password here).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

from cog_pipeline.config import Notify


def should_notify(settings: Notify, record: dict[str, Any]) -> bool:
    if settings.on == "never" or not (settings.email_to or settings.webhook_url):
        return False
    if settings.on == "always":
        return True
    return bool(record["counts"]["rows_failed"] or record["counts"]["errors"] or record.get("error"))


def subject(record: dict[str, Any]) -> str:
    c = record["counts"]
    if record.get("error"):
        return f"cog-pipeline: scan failed: {record['error']}"[:200]
    manifests = ", ".join(r["manifest_key"] for r in record["runs"] if r.get("failed")) or "no manifest"
    return f"cog-pipeline: {c['rows_failed']} row(s) failed, {c['rows_processed']} processed ({manifests})"[:200]


def body(record: dict[str, Any]) -> str:
    """Plain text: per run, its counts and where the failed rows and their reasons are."""
    lines = [f"Tick {record['started']} - {record['ended']} on {socket.gethostname()} (work dir {record['work_dir']})."]
    if record.get("error"):
        lines.append(f"The tick stopped: {record['error']}")
    for problem in record.get("errors", []):
        lines.append(f"error: {problem}")
    for run in record["runs"]:
        lines.append("")
        lines.append(f"Manifest {run['manifest_key']}: {run['processed']} processed, {run['failed']} failed.")
        for label, key in (("failed rows", "failed_key"), ("reasons", "reasons_key")):
            if run.get(key):
                lines.append(f"  {label}: {run[key]}")
        if run.get("report"):
            lines.append(f"  report: {run['report']}")
    lines += ["", "Resubmit failed rows by renaming the failed file to <name>_raw.csv once they are fixed."]
    return "\n".join(lines) + "\n"


def send_email(settings: Notify, record: dict[str, Any]) -> None:
    import smtplib
    from email.message import EmailMessage

    message = EmailMessage()
    message["Subject"] = subject(record)
    message["From"] = settings.email_from or f"cog-pipeline@{socket.getfqdn()}"
    message["To"] = ", ".join(a.strip() for a in settings.email_to.split(",") if a.strip())
    message.set_content(body(record))
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.timeout_s) as smtp:
        smtp.send_message(message)


def post_webhook(settings: Notify, record: dict[str, Any]) -> None:
    import urllib.request

    request = urllib.request.Request(settings.webhook_url, data=json.dumps(record, ensure_ascii=False).encode("utf-8"),
                                     headers={"Content-Type": "application/json", "User-Agent": "cog-pipeline"}, method="POST")
    with urllib.request.urlopen(request, timeout=settings.timeout_s) as response:  # noqa: S310 - the operator's URL
        response.read()


def notify(settings: Notify, record: dict[str, Any], warn: Callable[[str], None]) -> list[str]:
    """Send what the settings ask for; returns what was sent ("email", "webhook")."""
    if not should_notify(settings, record):
        return []
    # Imported only now: the mail and HTTP stack (smtplib, ssl, email, urllib.request: ~11 ms, and their share
    # of the interpreter's exit) is for the ticks that notify someone, not for every scan.
    import smtplib
    import urllib.error

    sent = []
    if settings.email_to:
        try:
            send_email(settings, record)
            sent.append("email")
        except (OSError, smtplib.SMTPException) as exc:
            warn(f"warning: notification email not sent via {settings.smtp_host}:{settings.smtp_port}: {type(exc).__name__}: {exc}")
    if settings.webhook_url:
        try:
            post_webhook(settings, record)
            sent.append("webhook")
        except urllib.error.HTTPError as exc:
            warn(f"warning: the webhook answered HTTP {exc.code}; notification not delivered")
        except (OSError, ValueError) as exc:  # URLError is an OSError; the URL itself is never printed
            warn(f"warning: the webhook could not be reached ({type(exc).__name__}); notification not delivered")
    return sent
