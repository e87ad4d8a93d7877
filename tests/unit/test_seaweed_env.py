"""The env files infra/seaweed.py writes are sourced by people's shells: values must stay data."""

from __future__ import annotations

import stat
import subprocess

from infra.seaweed import FIXED, GRPC_OFFSET, pick_ports, read_env_file, write_env_file


def test_a_hostile_secret_is_not_run_when_the_env_file_is_sourced(tmp_path):
    marker = tmp_path / "pwned"
    secret = f"$(touch {marker})`touch {marker}`'\"; touch {marker}; x=$HOME"
    env = tmp_path / "seaweed.env"
    write_env_file(env, {"AWS_ACCESS_KEY_ID": "qgkey", "AWS_SECRET_ACCESS_KEY": secret})
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    done = subprocess.run(
        ["bash", "-c", f'set -a; source "{env}"; set +a; printf %s "$AWS_SECRET_ACCESS_KEY"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert not marker.exists()
    assert done.stdout == secret
    assert read_env_file(env) == {"AWS_ACCESS_KEY_ID": "qgkey", "AWS_SECRET_ACCESS_KEY": secret}


def test_a_secret_holding_a_newline_reads_back_whole(tmp_path):
    """A quoted value spanning two lines crashed read_env_file (it split the file by lines) (#20)."""
    secret = "first line\nsecond # not a comment\n=x"  # noqa: S105 - a test value
    env = tmp_path / "seaweed.env"
    write_env_file(env, {"AWS_ACCESS_KEY_ID": "qgkey", "AWS_SECRET_ACCESS_KEY": secret}, "keys")
    assert read_env_file(env) == {"AWS_ACCESS_KEY_ID": "qgkey", "AWS_SECRET_ACCESS_KEY": secret}
    done = subprocess.run(
        ["bash", "-c", f'set -a; source "{env}"; set +a; printf %s "$AWS_SECRET_ACCESS_KEY"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == secret


def test_picked_ports_leave_the_fixed_servers_ports_and_their_grpc_twins_alone():
    """A range that holds nothing but the fixed ports' gRPC twins and a few beyond: every pick is beyond."""
    twins = range(FIXED.start + GRPC_OFFSET, FIXED.stop + GRPC_OFFSET)
    for _ in range(20):  # the search starts at a random point
        ports = pick_ports(first=twins.start, last=twins.stop + 60)
        assert ports
        assert not set(ports.values()) & set(twins), ports
