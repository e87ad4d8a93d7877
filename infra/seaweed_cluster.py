"""Start and stop SeaweedFS as a cluster on 127.0.0.1: 1 master, 3 volume servers, 2 filers each with its
own S3 gateway, all from the one `weed` binary, plus the PostgreSQL both filers keep their metadata in.

    python -m infra.seaweed_cluster start [--state-dir .quantgate] [--port 4650]
    python -m infra.seaweed_cluster stop  [--state-dir .quantgate]

Ports (base P, default 4650; each weed gRPC port is its HTTP port + 10000): master P, volume servers
P+1..P+3, filers P+4..P+5, S3 gateways P+6..P+7, PostgreSQL P+8. `start` writes
`<state>/seaweed-cluster.env` (both S3 endpoints and the keys, mode 600) and the pids to stop.

Why each flag (measured with SeaweedFS 4.48):
- `-defaultReplication=001` on the master: every volume has one more copy on another server of the same
  rack, so any one volume server can stop and every chunk still has a live copy.
- `-volumeSizeLimitMB=64`: each bucket is a collection of its own volumes; with the 30 GiB default a test
  session's buckets would claim disk it never writes.
- `-preStopSeconds=1` on volume servers: the default 10 s of "stop heartbeating, then exit" made every
  stop wait 10 s; one second is enough for the master to hear of it on 127.0.0.1.
- Filers share one metadata store, `postgres2` in `filer.toml` (read from the filer's working folder).
  By default each filer keeps its own embedded leveldb store and only *replays* its peers' changes
  asynchronously (the filers find each other through the master): two namespaces that converge later,
  in which a key created through one gateway can be missing through the other for a moment. One SQL store
  gives one namespace: every filer reads and writes the same rows.
- Same S3 identity file and `-s3.autoCreateBucket=false` as infra/seaweed.py; `-s3.port.iceberg=0
  -s3.port.lance=0` keep the gateways from opening further ports; `-localSocket` puts the filers' Unix
  sockets under the state folder instead of /tmp.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from infra.postgres import Postgres
from infra.prefect_server import service_main, stop_process
from infra.seaweed import (
    GRPC_OFFSET,
    SeaweedError,
    load_or_create_credentials,
    write_env_file,
    write_identity,
)

HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 4650
VOLUMES = 3
FILERS = 2
REPLICATION = "001"


def _weed() -> str:
    return shutil.which("weed") or str(Path(sys.executable).parent / "weed")


def _get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - fixed http://127.0.0.1 URL
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None


@dataclass
class SeaweedCluster:
    """The processes of one cluster, each with its own folder under `state_dir`."""

    state_dir: Path
    access_key: str
    secret_key: str
    base_port: int = DEFAULT_BASE_PORT
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    postgres: Postgres | None = None

    # --- addresses -----------------------------------------------------------------------------------
    @property
    def master_port(self) -> int:
        return self.base_port

    def volume_port(self, i: int) -> int:
        return self.base_port + 1 + i

    def filer_port(self, i: int) -> int:
        return self.base_port + 1 + VOLUMES + i

    def s3_port(self, i: int) -> int:
        return self.base_port + 1 + VOLUMES + FILERS + i

    @property
    def postgres_port(self) -> int:
        return self.base_port + 1 + VOLUMES + 2 * FILERS

    @property
    def endpoint_urls(self) -> list[str]:
        return [f"http://{HOST}:{self.s3_port(i)}" for i in range(FILERS)]

    @property
    def master_address(self) -> str:
        return f"{HOST}:{self.master_port}"

    # --- files ---------------------------------------------------------------------------------------
    def _private_dir(self, name: str) -> Path:
        path = self.state_dir / name
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)
        return path

    def _write_private(self, path: Path, text: str) -> Path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return path

    def _write_identity(self) -> Path:
        return write_identity(self.state_dir / "s3.json", self.access_key, self.secret_key)

    def _write_filer_toml(self, folder: Path, password: str) -> None:
        # The password is a TOML basic string: escape what TOML would read as syntax.
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        self._write_private(
            folder / "filer.toml",
            f"""[postgres2]
enabled = true
createTable = '''
  CREATE TABLE IF NOT EXISTS "%s" (
    dirhash BIGINT, name VARCHAR(65535), directory VARCHAR(65535), meta bytea,
    PRIMARY KEY (dirhash, name)
  );
'''
hostname = "{HOST}"
port = {self.postgres_port}
username = "quantgate"
password = "{quoted}"
database = "postgres"
schema = ""
sslmode = "disable"
connection_max_idle = 10
connection_max_open = 20
connection_max_lifetime_seconds = 300
enableUpsert = true
upsertQuery = '''
  INSERT INTO "%[1]s" (dirhash, name, directory, meta) VALUES($1, $2, $3, $4)
    ON CONFLICT (dirhash, name) DO UPDATE SET directory=EXCLUDED.directory, meta=EXCLUDED.meta
'''
""",
        )

    # --- commands ------------------------------------------------------------------------------------
    def master_command(self) -> list[str]:
        return [
            _weed(),
            "master",
            f"-mdir={self._private_dir('master')}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-port={self.master_port}",
            f"-port.grpc={self.master_port + GRPC_OFFSET}",
            "-peers=none",
            f"-defaultReplication={REPLICATION}",
            "-volumeSizeLimitMB=64",
            "-telemetry=false",
        ]

    def volume_command(self, i: int) -> list[str]:
        port = self.volume_port(i)
        return [
            _weed(),
            "volume",
            f"-dir={self._private_dir(f'volume{i}')}",
            "-max=0",  # as many volumes as free disk / volume size: each test bucket is a collection
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-port={port}",
            f"-port.grpc={port + GRPC_OFFSET}",
            f"-master={self.master_address}",
            "-preStopSeconds=1",
        ]

    def filer_command(self, i: int) -> list[str]:
        port, s3 = self.filer_port(i), self.s3_port(i)
        folder = self._private_dir(f"filer{i}")
        return [
            _weed(),
            "filer",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-port={port}",
            f"-port.grpc={port + GRPC_OFFSET}",
            f"-master={self.master_address}",
            f"-defaultStoreDir={folder}",
            f"-localSocket={folder / 'filer.sock'}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3 + GRPC_OFFSET}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={folder / 's3.sock'}",
            f"-s3.config={self.state_dir / 's3.json'}",
            "-s3.autoCreateBucket=false",
            "-webdav=false",
        ]

    # --- lifecycle -----------------------------------------------------------------------------------
    def _spawn(self, name: str, command: list[str], cwd: Path) -> None:
        log = os.fdopen(
            os.open(self.state_dir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with log:
            self.processes[name] = subprocess.Popen(
                command,
                cwd=cwd,  # filer.toml (and master.toml, security.toml) are read from "." first
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                umask=0o077,
            )

    def start(self, timeout: float = 60.0) -> SeaweedCluster:
        """Start everything and wait until both S3 gateways answer and the master sees every volume
        server. Whatever started is stopped again when any part fails."""
        self._private_dir("")
        self._write_identity()
        try:
            self.postgres = Postgres(self.state_dir, self.postgres_port).start()
            password = self.postgres.password_file.read_text().strip()
            deadline = time.monotonic() + timeout
            self._spawn("master", self.master_command(), self.state_dir)
            self._wait(deadline, "master", self._master_ready)
            for i in range(VOLUMES):
                self._spawn(f"volume{i}", self.volume_command(i), self.state_dir)
            self._wait(deadline, "volume servers", lambda: self.volume_servers_seen() == VOLUMES)
            # One at a time: a filer that starts while a peer is registered but not yet serving dies
            # bootstrapping from it ("traverse bfs metadata: ... connection refused").
            for i in range(FILERS):
                folder = self._private_dir(f"filer{i}")
                self._write_filer_toml(folder, password)
                self._spawn(f"filer{i}", self.filer_command(i), folder)
                self._wait(deadline, f"S3 gateway {i}", lambda i=i: self._s3_answers(i))
            self._wait(deadline, "filers' lock ring", self.lock_ring_settled)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, deadline: float, what: str, ready) -> None:
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise SeaweedError(
                        f"weed {name} exited with code {proc.returncode} while waiting for the {what}; "
                        f"see {self.state_dir / (name + '.log')}"
                    )
            if ready():
                return
            time.sleep(0.2)
        raise SeaweedError(f"the SeaweedFS {what} did not come up in time; logs in {self.state_dir}")

    def _master_ready(self) -> bool:
        status = _get_json(f"http://{self.master_address}/cluster/status")
        return bool(status and status.get("IsLeader"))

    def volume_servers_seen(self) -> int:
        """How many volume servers the master counts as alive (its topology, which it drops a server
        from once its heartbeats stop)."""
        status = _get_json(f"http://{self.master_address}/dir/status")
        if not status:
            return 0
        nodes = 0
        for dc in status.get("Topology", {}).get("DataCenters") or []:
            for rack in dc.get("Racks") or []:
                nodes += len(rack.get("DataNodes") or [])
        return nodes

    def _s3_answers(self, i: int) -> bool:
        try:
            urllib.request.urlopen(f"{self.endpoint_urls[i]}/", timeout=1)  # noqa: S310 - http://127.0.0.1
        except urllib.error.HTTPError:
            return True  # 403 for an anonymous request means the gateway is answering
        except (urllib.error.URLError, OSError):
            return False
        return True

    def lock_ring_settled(self) -> bool:
        """True once every filer and every S3 gateway has applied the lock ring naming all filers.
        Conditional writes are locked per object on the filer the ring assigns; a gateway that still
        holds an older ring (it arrives ≈1-2 s after a filer joins) would lock on another filer than its
        peer does, so no create-only write is served before then. No HTTP endpoint shows the ring: each
        filer's own log does ("LockRing: applying master ring update ...", "LockRing: s3@... received")."""
        members = [f"{HOST}:{self.filer_port(j)}" for j in range(FILERS)]
        for i in range(FILERS):
            try:
                text = (self.state_dir / f"filer{i}.log").read_text(errors="replace")
            except OSError:
                return False
            lines = [line for line in text.splitlines() if "LockRing:" in line]
            filer = [line for line in lines if "applying master ring update" in line]
            s3 = [line for line in lines if f"s3@{HOST}:{self.s3_port(i) + GRPC_OFFSET} received" in line]
            if not filer or not s3 or not all(m in filer[-1] and m in s3[-1] for m in members):
                return False
        return True

    def volume_servers_of(self, bucket: str, key: str) -> list[set[int]]:
        """For each chunk of an object, the volume servers (by index) holding a copy: the filer's entry
        names the chunks' volume ids, the master says where each volume lives."""
        entry = _get_json(f"http://{HOST}:{self.filer_port(0)}/buckets/{bucket}/{key}?metadata=true")
        if entry is None:
            raise SeaweedError(f"the filer has no entry for /buckets/{bucket}/{key}")
        by_url = {f"{HOST}:{self.volume_port(i)}": i for i in range(VOLUMES)}
        out = []
        for chunk in entry.get("chunks") or []:
            volume_id = chunk["file_id"].split(",")[0]
            found = _get_json(f"http://{self.master_address}/dir/lookup?volumeId={volume_id}") or {}
            out.append({by_url[loc["url"]] for loc in found.get("locations") or [] if loc["url"] in by_url})
        return out

    def stop_volume(self, i: int, timeout: float = 15.0) -> None:
        """Stop one volume server (the others keep running), e.g. to prove reads survive it."""
        proc = self.processes.pop(f"volume{i}", None)
        if proc is not None:
            stop_process(proc.pid, timeout)
            proc.wait(5)

    def pids(self) -> list[int]:
        """In start order: stopping in reverse order stops the gateways before what they depend on."""
        pg = [self.postgres.process.pid] if self.postgres and self.postgres.process else []
        return pg + [p.pid for p in self.processes.values()]

    def stop(self, timeout: float = 20.0) -> None:
        """Filers (with their gateways) first, then volume servers, the master, PostgreSQL; the members
        of each tier side by side: SIGTERM to each process group, SIGKILL after `timeout`. A filer's
        gRPC graceful stop waits up to 15 s for its subscribers' streams (logged: "graceful stop timed
        out after 15s, forcing stop"), so a stop that must be quick passes a shorter timeout."""
        tiers = [
            [n for n in self.processes if n.startswith("filer")],
            [n for n in self.processes if n.startswith("volume")],
            [n for n in self.processes if n == "master"],
        ]
        for names in tiers:
            procs = [self.processes.pop(n) for n in names]
            threads = [
                threading.Thread(target=stop_process, args=(p.pid, timeout))
                for p in procs
                if p.poll() is None
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    def __enter__(self) -> SeaweedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _start(state_dir: Path, port: int) -> list[int]:
    key, secret = load_or_create_credentials(state_dir)
    cluster = SeaweedCluster(state_dir / "seaweed-cluster", key, secret, base_port=port).start()
    write_env_file(
        state_dir / "seaweed-cluster.env",
        {
            "QUANTGATE_S3_ENDPOINT_URL": cluster.endpoint_urls[0],
            "QUANTGATE_S3_ENDPOINT_URL_2": cluster.endpoint_urls[1],
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
        },
        "the local SeaweedFS cluster's two S3 gateways, written by infra/seaweed_cluster.py",
    )
    print(
        f"SeaweedFS cluster: S3 on {' and '.join(cluster.endpoint_urls)}, master on "
        f"{cluster.master_address}; settings in {state_dir / 'seaweed-cluster.env'}"
    )
    return cluster.pids()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--port" not in argv:
        argv += ["--port", str(DEFAULT_BASE_PORT)]
    service_main(argv, __doc__.splitlines()[0], "seaweed-cluster.pids", _start, "SeaweedFS cluster stopped")


if __name__ == "__main__":
    main()
