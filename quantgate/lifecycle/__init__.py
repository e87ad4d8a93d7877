"""A model version's life in storage: register → pull → (promote | reject). Every function takes an
`Store` and local paths; the key layout lives in registry.py. One module per verb, this file only hands
their names on (callers keep writing `lifecycle.promote(...)`).

Write order is what makes a crash harmless: data files first, each under a prefix of its own writer (an
upload id, a run id), the JSON record that makes them count (registration.json, manifest.json, the
rejection report) last and create-only. A reader that trusts only files named by a record never sees a
half-written version, and a writer that lost the race for the record deletes only its own prefix.

Every write can fail, including one whose effect landed while its answer was lost. So each step can be
repeated: a run recognises its own record (by run id or upload id) and carries on from it, and the tail of
a promotion (pointer, audit event) is finished by whoever finds it unfinished, without ever moving the
pointer back to an older promotion.

    _records.py       JSON records: one encoder, parse errors that name the key and the way out
    registration.py   register, load_registration, list_registered
    decisions.py      what was decided: decision_of, load_manifest, load_rejection, current (the pointer)
    audit.py          the audit log
    verification.py   verify_promotion
    pointer.py        moving current.json: forward after a promotion, back on a rollback (plan, apply)
    promotion.py      promote, finish_promotion
    rejection.py      reject
    sweep.py          sweep_plan: what the registry sweep runs, sweep_rows: what it did; last_failure,
                      unreported_crash: a killed run the sweep writes the report of
    download.py       pull (a registered version), pull_promotion, engine_drift
    champion.py       pull_champion: the serving version, to judge beside a new one
    run_reports.py    write_run_report, write_data_docs
"""

from quantgate.lifecycle._records import NO_TRUST
from quantgate.lifecycle.audit import AuditLog, audit_log, event_keys, read_audit_log
from quantgate.lifecycle.champion import Champion, pull_champion
from quantgate.lifecycle.decisions import (
    current,
    decision_of,
    load_decision_report,
    load_manifest,
    load_rejection,
    read_promoted_file,
)
from quantgate.lifecycle.download import (
    RUN_SPACE_FACTOR,
    EngineDrift,
    PulledVersion,
    engine_drift,
    local_name,
    pull,
    pull_promotion,
)
from quantgate.lifecycle.pointer import RollbackPlan, apply_rollback, plan_rollback, rollback
from quantgate.lifecycle.promotion import finish_promotion, promote, promotion_finished
from quantgate.lifecycle.registration import list_registered, load_registration, model_files, register
from quantgate.lifecycle.rejection import reject
from quantgate.lifecycle.run_reports import write_data_docs, write_run_report
from quantgate.lifecycle.sweep import (
    RunHistory,
    SweepPlan,
    failed_runs,
    last_failure,
    run_history,
    sweep_plan,
    sweep_rows,
    sweep_summary,
    undecided,
    unreported_crash,
)
from quantgate.lifecycle.verification import FileCheck, Verification, verify_promotion
from quantgate.registry import ModelRef  # callers (tests/integration/test_signing_s3.py) name it from here

__all__ = [
    "NO_TRUST",
    "RUN_SPACE_FACTOR",
    "AuditLog",
    "Champion",
    "EngineDrift",
    "FileCheck",
    "ModelRef",
    "PulledVersion",
    "RollbackPlan",
    "RunHistory",
    "SweepPlan",
    "Verification",
    "apply_rollback",
    "audit_log",
    "current",
    "decision_of",
    "engine_drift",
    "event_keys",
    "failed_runs",
    "finish_promotion",
    "last_failure",
    "list_registered",
    "load_decision_report",
    "load_manifest",
    "load_registration",
    "load_rejection",
    "local_name",
    "model_files",
    "plan_rollback",
    "promote",
    "promotion_finished",
    "pull",
    "pull_champion",
    "pull_promotion",
    "read_audit_log",
    "read_promoted_file",
    "register",
    "reject",
    "rollback",
    "run_history",
    "sweep_plan",
    "sweep_rows",
    "sweep_summary",
    "undecided",
    "unreported_crash",
    "verify_promotion",
    "write_data_docs",
    "write_run_report",
]
