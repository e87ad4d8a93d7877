"""Storage stages: pull a registered version, look up a decision, promote, reject, keep the run report."""

from __future__ import annotations

import math
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect import get_client, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.logging import get_run_logger

from quantgate import lifecycle
from quantgate.errors import ConflictError, IntegrityError, NotFoundError
from quantgate.registry import Manifest, ModelRef, Outcome
from quantgate.report import RunReport
from quantgate.report import decision_links as links_for
from quantgate.settings import Settings
from quantgate.signing import promotion_signer, trusted_keys
from quantgate.storage import open_store
from tasks._common import STORAGE_TASK
from tasks.runs import in_flight


@task(name="find-decision", cache_policy=NO_CACHE, **STORAGE_TASK)
def find_decision(ref: ModelRef, settings: Settings) -> Outcome | None:
    return lifecycle.decision_of(open_store(settings), ref)


@task(name="find-undecided", cache_policy=NO_CACHE, **STORAGE_TASK)
def find_undecided(settings: Settings, max_failures: int) -> lifecycle.SweepPlan:
    """Versions without a decision and promotions left unfinished; what was skipped is logged."""
    plan = lifecycle.sweep_plan(open_store(settings), max_failures)
    logger = get_run_logger()
    logger.info(
        "%d registered version(s) to run (no decision, or an unfinished promotion): %s",
        len(plan.pending),
        ", ".join(map(str, plan.pending)) or "none",
    )
    for ref, why in plan.skipped.items():
        logger.warning("skipped %s: %s", ref, why)
    return plan


@task(name="runs-in-flight", cache_policy=NO_CACHE, **STORAGE_TASK)
def runs_in_flight(refs: list[ModelRef], max_age_h: float) -> dict[str, str]:
    """str(ref) -> "in flight: <its quantize-and-promote run not ended yet>" (waiting for a worker or a
    concurrency slot, running, paused for approval), for the versions in `refs`: the sweep leaves those to
    that run. A run created more than `max_age_h` hours ago holds nothing back (a run stuck that long is
    what the safety net is for; its decision is still one, lifecycle/promotion.py's cross-check)."""
    return in_flight(refs, max_age_h)


@task(name="hold-back", cache_policy=NO_CACHE, **STORAGE_TASK)
def hold_back(settings: Settings, ref: ModelRef, max_age_h: float, grace_s: float) -> str | None:
    """Why the sweep should not run `ref` now, checked just before it would: a run of it not yet ended
    (created while the sweep ran others: Prefect created the runs of a 500-event burst over 129-307 s,
    docs/scale.md), or a registration younger than `grace_s` seconds, whose own trigger's run may not
    exist yet. None: run it."""
    from datetime import UTC, datetime

    from quantgate.registry import parse_time

    try:
        registered = parse_time(lifecycle.load_registration(open_store(settings), ref).registered_at)
    except (IntegrityError, NotFoundError):
        registered = None  # the run says what is wrong with it, in its own report, as for any version
    age_s = (datetime.now(UTC) - registered).total_seconds() if registered else math.inf
    if age_s < grace_s:  # first: one GET, where the in-flight check reads every run not ended
        return (
            f"registered {age_s:.0f} s ago, within the sweep's {grace_s:g} s grace: its registration's own "
            "run may not have been created yet (the next sweep runs it if it is still undecided)"
        )
    return in_flight([ref], max_age_h).get(str(ref))


CRASHED_RUNS_LOOKED_AT = 200  # the most recent: a crash older than that was long since re-run


@task(name="record-crashes", cache_policy=NO_CACHE, **STORAGE_TASK)
def record_crashes(settings: Settings, found_by: str) -> list[tuple[dict[str, Any], str]]:
    """Runs of quantize-and-promote that ended Crashed (killed; marked by infra/zombies.py's automation)
    without a run report, for versions still undecided: writes the report each would have written, so
    the sweep counts them against max_failures and `report`/`list` say "failed: Crashed: …". Returns
    (report, stored key) per crash recorded now; a crash recorded before is not recorded again."""
    from quantgate.errors import QuantgateError
    from quantgate.report import crash_report
    from tasks.runs import flow_runs, version_of

    crashed = flow_runs("CRASHED", newest_first=True, limit=CRASHED_RUNS_LOOKED_AT)
    store, logger, recorded = open_store(settings), get_run_logger(), []
    for run in crashed:
        model, _, version = version_of(run).partition("@")
        try:
            ref = ModelRef(name=model, version=version)
        except (QuantgateError, ValueError):
            continue  # not named model@version: not a run of a registered version
        if not lifecycle.unreported_crash(store, ref, str(run.id)):
            continue
        state = run.state
        at = state.timestamp.isoformat() if state and state.timestamp else None
        report = crash_report(
            ref, str(run.id), state.name if state else "Crashed", state and state.message, at, found_by
        )
        key = lifecycle.write_run_report(store, ref, str(run.id), report)
        logger.warning(
            "%s: run %s ended %s without a report; recorded it as failed", ref, run.id, report["error"]
        )
        recorded.append((report, key))
    return recorded


@task(name="pull-champion", cache_policy=NO_CACHE, **STORAGE_TASK)
def pull_champion(ref: ModelRef, task: str, settings: Settings, dest: Path) -> lifecycle.Champion | None:
    """The model's serving version (checksums verified), judged beside this one; None for a first one."""
    import shutil

    shutil.rmtree(dest, ignore_errors=True)  # a retry starts from an empty folder
    logger = get_run_logger()
    try:
        champion = lifecycle.pull_champion(open_store(settings), ref.name, task, dest, trusted_keys(settings))
    except (IntegrityError, NotFoundError) as exc:
        # A damaged serving version is `quantgate verify`'s finding to act on; it must not block its fix.
        logger.warning("the serving version of %s cannot be used as a champion: %s", ref.name, exc)
        return None
    if champion is None:
        logger.info("%s has no champion: no promoted version of %s serves yet", ref, ref.name)
    else:
        logger.info("champion: %s@%s (%s), verified", ref.name, champion.version, champion.model_path.name)
    return champion


@task(name="pull", cache_policy=NO_CACHE, **STORAGE_TASK)
def pull_version(ref: ModelRef, settings: Settings, dest: Path) -> lifecycle.PulledVersion:
    pulled = lifecycle.pull(open_store(settings), ref, dest)
    get_run_logger().info(
        "pulled %s: %d model files, held-out %s (task %s)",
        ref,
        len(pulled.registration.files),
        pulled.registration.heldout.path,
        pulled.registration.task,
    )
    return pulled


PROMOTION_LEASE_S = 60  # the shortest lease Prefect's server accepts; renewed while the slot is held


def promotion_limit(model: str) -> str:
    """A global concurrency limit of 1 per model, created on first use (`concurrency()` on a limit that
    does not exist would not block)."""
    name = f"quantgate-promote-{model}"
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    return name


@task(name="promote", cache_policy=NO_CACHE, **STORAGE_TASK)
def promote(
    settings: Settings, manifest: Manifest, files: dict[str, Path], report: dict[str, Any]
) -> str | None:
    """None when this run promoted; otherwise why not (a concurrent run decided first).

    Two runs of one model never upload at once: they queue on a Prefect concurrency slot per model. The
    slot is an efficiency measure, not the safety net: the create-only manifest is what makes a lost race
    harmless. So when the slot cannot be had in time (a run SIGKILLed while holding it keeps it until its
    lease expires) the promotion goes on without it, and says so."""
    logger = get_run_logger()
    try:
        with ExitStack() as held:
            try:
                held.enter_context(
                    concurrency(
                        promotion_limit(manifest.model),
                        occupy=1,
                        strict=True,
                        timeout_seconds=settings.promotion_lock_timeout_s,
                        lease_duration=PROMOTION_LEASE_S,
                    )
                )
            except TimeoutError:
                logger.warning(
                    "promotion slot for %s not free after %.0f s (a killed run's lease?): promoting without "
                    "it; the create-only manifest still lets only one run win",
                    manifest.model,
                    settings.promotion_lock_timeout_s,
                )
            final = lifecycle.promote(
                open_store(settings), manifest, files, report, settings.actor, promotion_signer(settings)
            )
    except ConflictError as exc:
        get_run_logger().warning("%s", exc)
        return str(exc)
    logger.info(
        "promoted %s@%s: %d files, %s, manifest then current.json written last",
        final.model,
        final.version,
        len(final.files),
        "signed" if any(f.path.endswith("/model.sig") for f in final.files) else "unsigned",
    )
    return None


@task(name="finish-promotion", cache_policy=NO_CACHE, **STORAGE_TASK)
def finish_promotion(ref: ModelRef, settings: Settings) -> dict[str, Any] | None:
    """Completes a promotion a killed or failed run left between its manifest and its audit event; the
    promoted run's report when it did (so the flow can announce it), None when there was nothing to do."""
    store = open_store(settings)
    if not lifecycle.finish_promotion(store, ref, settings.actor, trusted_keys(settings)):
        return None
    get_run_logger().warning("%s: finished an interrupted promotion (pointer and audit log)", ref)
    return lifecycle.load_decision_report(store, ref)


@task(name="record-rejection", cache_policy=NO_CACHE, **STORAGE_TASK)
def record_rejection(settings: Settings, ref: ModelRef, report: dict[str, Any]) -> str | None:
    """None when this run recorded the rejection; otherwise why not (a concurrent run decided first)."""
    from quantgate.report import RunReport, decision_plots

    parsed = RunReport.model_validate(report)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            plots = decision_plots(parsed, Path(tmp))
            parity = parsed.parity.model_dump() if parsed.parity else None  # None: no candidate was built
            key = lifecycle.reject(open_store(settings), ref, report, parity, plots)
    except ConflictError as exc:
        get_run_logger().warning("%s", exc)
        return str(exc)
    get_run_logger().info("rejected %s: report at s3://%s/%s; nothing promoted", ref, settings.bucket, key)
    return None


@task(name="decision-links", cache_policy=NO_CACHE)
def decision_links(settings: Settings, report: RunReport) -> dict[str, str]:
    """Presigned links (no request is sent: the signature is computed locally) to what the decision
    stored, valid for settings.link_expiry_s."""
    return links_for(report, open_store(settings), settings.link_expiry_s)


@task(name="failure-links", cache_policy=NO_CACHE)
def failure_links(settings: Settings, report: dict[str, Any], saved_key: str | None) -> dict[str, str]:
    """Presigned links to a failed run's stored report and Data Docs; none when they cannot be made (a
    failed run's own links must never hide what failed it)."""
    from quantgate.report import browser_links, failure_keys

    try:
        return browser_links(open_store(settings), failure_keys(report, saved_key), settings.link_expiry_s)
    except Exception as exc:  # noqa: BLE001 - best effort, see above
        get_run_logger().warning("no links to the failed run's report: %s: %s", type(exc).__name__, exc)
        return {}


@task(name="save-data-docs", cache_policy=NO_CACHE, **STORAGE_TASK)
def save_data_docs(settings: Settings, ref: ModelRef, run_id: str, docs_dir: Path, pages: list[str]) -> str:
    """s3:// address of the stored Data Docs page a person opens first (the validation result)."""
    from quantgate.datadocs import main_page, make_offline

    files = make_offline(docs_dir, pages) if pages else []
    main = main_page(pages) or "index.html"
    key = lifecycle.write_data_docs(open_store(settings), ref, run_id, docs_dir, files, main)
    get_run_logger().info("GX Data Docs of the held-out validation: s3://%s/%s", settings.bucket, key)
    return f"s3://{settings.bucket}/{key}"


@task(name="save-run-report", cache_policy=NO_CACHE, **STORAGE_TASK)
def save_run_report(settings: Settings, ref: ModelRef, run_id: str, report: dict[str, Any]) -> str:
    return lifecycle.write_run_report(open_store(settings), ref, run_id, report)
