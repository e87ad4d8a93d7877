"""Prefect flows: the entry points workers and the CLI import first."""

from quantgate.process import configure_process

configure_process()
