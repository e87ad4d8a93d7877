"""Does SeaweedFS give one winner to racing create-only multipart completions? Writers each upload two
parts of one new key, then all send CompleteMultipartUpload with `If-None-Match: *` at once (one barrier);
a round prints how many were answered 200. docs/storage.md ("Big files") quotes a run of it. One `weed mini`
on 127.0.0.1 (ports picked by infra.seaweed), stopped at the end, also on failure.

    .venv/bin/python -m benchmarks.multipart_race [--rounds 10] [--writers 8] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.seaweed import SeaweedServer

KEY, SECRET = "qgrace" + secrets.token_hex(4), secrets.token_urlsafe(24)


def _client(server: SeaweedServer) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        config=Config(s3={"addressing_style": "path"}),
    )


def _round(server: SeaweedServer, bucket: str, key: str, writers: int) -> list[str]:
    setup = _client(server)
    part = os.urandom(5 << 20)
    uploads = []
    for i in range(writers):
        upload_id = setup.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = []
        for number, body in ((1, part), (2, bytes([i]) * 1000)):
            etag = setup.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
            parts.append({"PartNumber": number, "ETag": etag["ETag"]})
        uploads.append((upload_id, parts))
    clients = [_client(server) for _ in range(writers)]
    barrier = threading.Barrier(writers)
    answers = [""] * writers

    def complete(i: int) -> None:
        upload_id, parts = uploads[i]
        barrier.wait()
        try:
            clients[i].complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
            )
            answers[i] = "200"
        except ClientError as exc:
            answers[i] = exc.response["Error"]["Code"]

    threads = [threading.Thread(target=complete, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for upload_id, _ in uploads:  # the refused ones are still open
        setup.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qg-race-") as state:
        server = SeaweedServer(Path(state), KEY, SECRET)
        server.start()
        try:
            _client(server).create_bucket(Bucket="race")
            winners = []
            for n in range(args.rounds):
                answers = _round(server, "race", f"k{n}", args.writers)
                winners.append(answers.count("200"))
                codes = sorted(set(answers))
                print(f"round {n}: {answers.count('200')} of {args.writers} answered 200 ({codes})")
        finally:
            server.stop(timeout=5)
    result = {"writers": args.writers, "rounds": args.rounds, "winners_per_round": winners}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
