"""The pure pieces of the Prefect-on-PostgreSQL switch (infra/postgres.py): the switch and port settings,
the connection URL, and the redaction that keeps its password out of messages."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

from infra.postgres import PostgresError, connection_url, database_choice, postgres_port, redact


def test_sqlite_is_the_default_and_postgres_is_chosen_by_one_switch():
    assert database_choice({}) == "sqlite"
    assert database_choice({"QUANTGATE_PREFECT_DB": ""}) == "sqlite"
    assert database_choice({"QUANTGATE_PREFECT_DB": "Postgres "}) == "postgres"


def test_an_unknown_database_choice_names_the_value_and_the_choices():
    with pytest.raises(PostgresError, match=r"QUANTGATE_PREFECT_DB='mysql' is not one of sqlite, postgres"):
        database_choice({"QUANTGATE_PREFECT_DB": "mysql"})


@pytest.mark.parametrize("raw", ["abc", "0", "70000"])
def test_a_bad_postgres_port_is_named(raw: str):
    with pytest.raises(PostgresError, match=rf"QUANTGATE_POSTGRES_PORT='{raw}'"):
        postgres_port({"QUANTGATE_POSTGRES_PORT": raw})


def test_postgres_port_defaults_to_5432():
    assert postgres_port({}) == 5432
    assert postgres_port({"QUANTGATE_POSTGRES_PORT": "4572"}) == 4572


def test_connection_url_is_asyncpg_on_loopback_and_quotes_the_password():
    password = "p@ss:w/rd?#%"  # noqa: S105 - a made-up value with URL-special characters
    url = connection_url(password, 4572)
    parts = urlsplit(url)
    assert parts.scheme == "postgresql+asyncpg"
    assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", 4572, "/prefect")
    assert parts.username == "quantgate"
    assert unquote(parts.password or "") == password


def test_redact_hides_the_raw_and_the_quoted_password():
    password = "p@ss:w/rd"  # noqa: S105 - made up
    url = connection_url(password, 4572)
    text = f"failed for {url} with secret {password}"
    hidden = redact(text, password)
    assert password not in hidden
    assert "p%40ss" not in hidden
    assert hidden.count("***") == 2
    assert redact("nothing here", "") == "nothing here"
