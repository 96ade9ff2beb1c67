"""The ``careloop`` command: demo, worker, relay, db, rules, policy, deliveries, keys."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click
from pydantic import TypeAdapter, ValidationError
from rq.cli.cli import main as rq_main
from sqlalchemy import select

from careloop import access, audit, serialize
from careloop.config.settings import get_settings
from careloop.db import session_scope, upgrade
from careloop.deliveries import retry_failed
from careloop.events import Line200
from careloop.handover import hand_over_deliveries
from careloop.models import ApiKey, Delivery
from careloop.policy import PolicyError, load_policy
from careloop.queues import queue_names
from careloop.rules import RulesError, load_rules
from careloop.runtime import ConfigurationError, Runtime
from careloop.text import LOG_FORMAT, LogFormatter, for_log
from careloop.vocabulary import RETRYABLE_STATUSES, ChannelKind
from careloop.workers import build_runtime
from careloop.workers.relay import relay_once, run_relay


def _fail(message: str) -> None:
    click.secho(message, fg="red", err=True)
    sys.exit(2)


def _runtime() -> Runtime:
    try:
        runtime = build_runtime()
        runtime.check()
    except (RulesError, PolicyError, ConfigurationError) as exc:
        _fail(str(exc))
    return runtime


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(verbose: bool) -> None:
    """careloop: keeps a child's whole care team in the loop."""
    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter(LOG_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


@main.command()
@click.option("--outbox", type=click.Path(path_type=Path), default=Path("careloop-outbox"), show_default=True)
@click.option("--database", default="sqlite:///careloop-demo.db", show_default=True)
@click.option("--serve", is_flag=True, help="Then serve the demo's app on 127.0.0.1: the member links open.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="For --serve.")
def demo(outbox: Path, database: str, serve: bool, port: int) -> None:
    """Build a sample notebook, record three events, show who was told what and each
    member's own link to each event."""
    from careloop.demo import run_demo  # here, not at the top: only the demo needs Flask

    logging.getLogger().setLevel(logging.WARNING)
    try:
        run_demo(outbox_dir=outbox, database_url=database, echo=click.echo, port=port, serve=serve)
    except OSError as exc:  # the port is taken, say
        _fail(f"careloop demo: {exc.strerror or exc}")


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.option(
    "--channels",
    default=None,
    help="Comma-separated channels whose deliveries this worker sends (default: all). "
    "Every worker also routes events; urgent deliveries of its channels go first.",
)
@click.pass_context
def worker(ctx: click.Context, channels: str | None) -> None:
    """Run careloop's worker on its queues, with RQ's scheduler and careloop's relay.

    --channels sms (say) keeps a hung SMTP server from delaying texts; every other option is
    RQ's own (`rq worker --help`), e.g. --burst, --name, --max-jobs.
    """
    args = list(ctx.args)
    chosen = [c.strip() for c in channels.split(",") if c.strip()] if channels else None
    unknown = sorted(set(chosen or ()) - set(ChannelKind))
    if unknown:
        _fail(f"--channels: unknown channels {unknown} (use {', '.join(ChannelKind)})")
    if "--help" in args or "-h" in args:  # help needs no configuration
        rq_main.main(args=["worker", "--help"], prog_name="careloop")
        return
    settings = get_settings()
    if not settings.redis_url:
        _fail("careloop worker needs REDIS_URL; without it the web process runs jobs itself (embedded mode)")
    _runtime()
    rq_args = [
        "worker",
        "--url",
        settings.redis_url,
        "--worker-class",
        "careloop.workers.runner.CareloopWorker",
        "--connection-class",
        "careloop.workers.runner.ResilientRedis",
        "--job-class",
        "careloop.workers.runner.CareloopJob",
        "--serializer",
        "rq.serializers.JSONSerializer",
        "--with-scheduler",
        *args,
        *queue_names(settings.queue_prefix, chosen),
    ]
    rq_main.main(args=rq_args, prog_name="careloop")


@main.command()
@click.option("--once", is_flag=True, help="One sweep, then exit.")
@click.option(
    "--parent-pid", type=int, hidden=True, help="Exit when this process is gone (set by the worker)."
)
def relay(once: bool, parent_pid: int | None) -> None:
    """Hand pending events and due deliveries to the queue; check stale sends."""
    runtime = _runtime()
    if once:
        click.echo(json.dumps(relay_once(runtime)))
        return
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())

    def should_stop() -> bool:
        return stopped.is_set() or (parent_pid is not None and os.getppid() != parent_pid)

    run_relay(runtime, should_stop, stopped.wait)


@main.group()
def db() -> None:
    """Database schema (alembic migrations)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    upgrade(get_settings().database_url, revision)
    click.echo(f"database at {revision}")


@main.group()
def rules() -> None:
    """Routing rules."""


@rules.command("check")
@click.argument("path", type=click.Path(path_type=Path))
def rules_check(path: Path) -> None:
    """Check a rules file; errors are reported by rule name."""
    try:
        parsed = load_rules(path)
    except RulesError as exc:
        for error in exc.errors:
            click.secho(f"{path}: {error}", fg="red", err=True)
        sys.exit(1)
    click.echo(f"{path}: {len(parsed.rules)} rules OK")


@main.group()
def policy() -> None:
    """The need-to-know policy: what each role may see of an event."""


@policy.command("check")
@click.argument("path", type=click.Path(path_type=Path))
def policy_check(path: Path) -> None:
    """Check a policy file; errors are reported by role."""
    try:
        parsed = load_policy(path)
    except PolicyError as exc:
        for error in exc.errors:
            click.secho(f"{path}: {error}", fg="red", err=True)
        sys.exit(1)
    click.echo(f"{path}: {len(parsed.roles)} roles OK")


@main.group()
def deliveries() -> None:
    """Dead letters: list failed deliveries and send them again."""


@deliveries.command("failed")
@click.option("--notebook", "notebook_id", help="Only this notebook.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def deliveries_failed(notebook_id: str | None, limit: int, as_json: bool) -> None:
    """List failed deliveries, newest first."""
    runtime = _runtime()
    with session_scope(runtime.database_url) as session:
        stmt = select(Delivery).where(Delivery.status.in_(RETRYABLE_STATUSES))
        if notebook_id:
            stmt = stmt.where(Delivery.notebook_id == notebook_id)
        rows = session.scalars(stmt.order_by(Delivery.updated_at.desc()).limit(limit)).all()
        for row in rows:
            if as_json:
                click.echo(json.dumps(serialize.delivery(row)))
            else:
                click.echo(
                    f"{row.id}  {row.channel:<8} {row.status:<11} attempts={row.attempts}  "
                    f"event={row.event_id}  member={row.member_id}  {row.error or ''}"
                )
        if not rows and not as_json:
            click.echo("no failed deliveries")


@deliveries.command("retry")
@click.argument("delivery_ids", nargs=-1)
@click.option("--all-failed", is_flag=True, help="Every failed or undelivered delivery.")
def deliveries_retry(delivery_ids: tuple[str, ...], all_failed: bool) -> None:
    """Send failed deliveries again (idempotent: a delivery already queued or sent is left alone)."""
    if not delivery_ids and not all_failed:
        _fail("name delivery ids or pass --all-failed")
    runtime = _runtime()
    with session_scope(runtime.database_url) as session:
        ids = list(delivery_ids)
        if all_failed:
            ids += session.scalars(select(Delivery.id).where(Delivery.status.in_(RETRYABLE_STATUSES))).all()
        requeued, unknown = [], []
        for delivery_id in dict.fromkeys(ids):
            if session.get(Delivery, delivery_id) is None:
                unknown.append(delivery_id)
                click.secho(f"{delivery_id}: no such delivery", fg="yellow", err=True)
            elif retry_failed(session, delivery_id):
                requeued.append(delivery_id)
                click.echo(f"{delivery_id}: queued again")
            else:
                click.echo(f"{delivery_id}: not failed; left as it is")
        if requeued:
            hand_over_deliveries(session, runtime.dispatcher, requeued)
            drain = getattr(runtime.dispatcher, "drain", None)
            if drain:
                drain(timeout=60)
    runtime.close()
    if unknown:
        sys.exit(1)


@main.group()
def keys() -> None:
    """API keys: mint (shown once), list (never the secret), revoke (at once)."""


def _operator_did(session, action: str, status: int, key_id: str | None, notebook_ids: list[str]) -> None:
    """The audit row of something done from the shell (one per notebook it touched)."""
    for notebook_id in notebook_ids or [None]:
        actor = audit.ActorType.OPERATOR
        audit.record(
            session, action, status=status, actor_type=actor, notebook_id=notebook_id, target_id=key_id
        )


@keys.command("create")
@click.option(
    "--notebook",
    "notebook_ids",
    multiple=True,
    required=True,
    help="The notebook it reaches; a clinic key: repeat for each notebook.",
)
@click.option("--name", required=True, help="What it is for: Dana's phone, clinic EHR.")
@click.option(
    "--role",
    type=click.Choice([r.value for r in access.KeyRole]),
    default=access.KeyRole.FAMILY.value,
    show_default=True,
    help="family, clinician or integration (one notebook); clinic (several).",
)
@click.option("--json", "as_json", is_flag=True, help="The key as the API shows it, with its secret.")
def keys_create(notebook_ids: tuple[str, ...], name: str, role: str, as_json: bool) -> None:
    """Mint a key. Its secret is printed this once and stored only as a hash."""
    role = access.KeyRole(role)
    if role in access.NOTEBOOK_KEY_ROLES and len(notebook_ids) != 1:
        _fail(f"a {role} key reaches one notebook: give --notebook once (or use --role clinic)")
    try:
        name = TypeAdapter(Line200).validate_python(name)  # the API's rule for names
    except ValidationError as exc:
        _fail(f"--name: {exc.errors()[0]['msg']}")
    with session_scope(get_settings().database_url) as session:
        try:
            if role in access.NOTEBOOK_KEY_ROLES:
                key, secret = access.create_key(session, name=name, role=role, notebook_id=notebook_ids[0])
            else:
                key, secret = access.create_key(session, name=name, role=role, notebook_ids=notebook_ids)
        except access.UnknownNotebooks as unknown:
            _fail(f"no such notebook: {', '.join(notebook_ids[i] for i in unknown.positions)}")
        reached = access.notebooks_of(session, key)
        _operator_did(session, "cli.keys_create", 201, key.id, reached)
        shown = {**serialize.api_key(key, reached), "key": secret}
    if as_json:
        click.echo(json.dumps(shown))
        return
    click.echo(f"{shown['id']}  {role}  {', '.join(reached)}")
    click.echo(f"key (shown this once, keep it safe): {secret}")


@keys.command("list")
@click.option("--notebook", "notebook_id", help="Only the keys reaching this notebook.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def keys_list(notebook_id: str | None, as_json: bool) -> None:
    """List working keys, oldest first (never their secrets)."""
    with session_scope(get_settings().database_url) as session:
        rows = access.keys_reaching(session, notebook_id) if notebook_id else access.all_keys(session)
        shown = [serialize.api_key(k, access.notebooks_of(session, k)) for k in rows]
        _operator_did(session, "cli.keys_list", 200, None, [notebook_id] if notebook_id else [])
    for key in shown:
        if as_json:
            click.echo(json.dumps(key))
        else:
            used = key["last_used_at"] or "never used"
            reach = ",".join(key["notebook_ids"])
            click.echo(
                f"{key['id']}  {key['role']:<11} {for_log(key['name'])}  notebooks={reach}"
                f"  created={key['created_at']}  last used={used}"
            )
    if not shown and not as_json:
        click.echo("no keys")


@keys.command("revoke")
@click.argument("key_id")
@click.option("--notebook", "notebook_id", help="Only for this notebook (a clinic key keeps its others).")
def keys_revoke(key_id: str, notebook_id: str | None) -> None:
    """Revoke a key: its next request is refused (401; a clinic key taken off one notebook: 404 there)."""
    with session_scope(get_settings().database_url) as session:
        key = session.get(ApiKey, key_id)
        reached = access.notebooks_of(session, key) if key is not None else []
        if not access.revoke(session, key_id, notebook_id=notebook_id):
            _fail(f"{key_id}: no such working key" + (f" on {notebook_id}" if notebook_id else ""))
        _operator_did(session, "cli.keys_revoke", 200, key_id, [notebook_id] if notebook_id else reached)
    click.echo(f"{key_id}: revoked" + (f" on {notebook_id}" if notebook_id else ""))


if __name__ == "__main__":  # pragma: no cover
    main()
