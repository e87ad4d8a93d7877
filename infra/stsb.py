"""Where the STS Benchmark dev split (the real held-out set of the demo, the tests and the benchmarks) is.

The workplace keeps it read-only in `shared/data/stsb/` beside the checkout. Its texts come under several
licences (MSR's among them), so it is read from there, not copied into this repository. A clone made
anywhere else (`git clone . "$(mktemp -d)"`, as CI's check is written) has no such neighbour, so the next
place looked is beside the repository it was cloned from. QUANTGATE_STSB overrides both.

    python -m infra.stsb        # prints the path it found, or says where it looked and exits 2
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RELATIVE = Path("shared") / "data" / "stsb" / "sts-dev.tsv"


def _origin_checkout(repo: Path) -> Path | None:
    """The local repository this one was cloned from, if it was cloned from a folder."""
    try:
        url = subprocess.run(
            ["git", "-C", str(repo), "config", "--get", "remote.origin.url"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return None
    path = Path(url.removeprefix("file://")) if url else None
    if path is not None and not path.is_absolute():
        path = repo / path
    # A network remote (https://..., git@host:...) is no folder here.
    return path.resolve() if path is not None and path.is_dir() else None


def candidates(repo: Path = REPO) -> list[Path]:
    """Where the split is looked for, in order."""
    if os.environ.get("QUANTGATE_STSB"):
        return [Path(os.environ["QUANTGATE_STSB"])]
    places = [repo.parent / RELATIVE]
    origin = _origin_checkout(repo)
    if origin is not None and origin.parent / RELATIVE not in places:
        places.append(origin.parent / RELATIVE)
    return places


def stsb_path(repo: Path = REPO) -> Path | None:
    return next((p for p in candidates(repo) if p.is_file()), None)


def missing_message(repo: Path = REPO) -> str:
    looked = ", ".join(str(p) for p in candidates(repo))
    return f"STS-B dev split (sts-dev.tsv) not found; looked at {looked}: set QUANTGATE_STSB to its path"


def shared_file(dataset: str, filename: str, repo: Path = REPO) -> Path:
    """Another of the workplace's read-only data sets (`sst2`, `wnut17`), found the same way:
    `shared/data/<dataset>/<filename>` beside this checkout or beside the one it was cloned from;
    QUANTGATE_DATA (the `shared/data` folder) overrides both."""
    relative = Path("shared") / "data" / dataset / filename
    if os.environ.get("QUANTGATE_DATA"):
        places = [Path(os.environ["QUANTGATE_DATA"]) / dataset / filename]
    else:
        places = [repo.parent / relative]
        origin = _origin_checkout(repo)
        if origin is not None:
            places.append(origin.parent / relative)
    found = next((p for p in places if p.is_file()), None)
    if found is None:
        looked = ", ".join(str(p) for p in places)
        raise FileNotFoundError(f"{dataset}/{filename} not found; looked at {looked}: set QUANTGATE_DATA")
    return found


def main() -> int:
    path = stsb_path()
    if path is None:
        print(missing_message(), file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
