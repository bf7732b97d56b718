"""Reconcile of an N-row manifest against a real HTTP S3 server (moto), side by side with the original
tool's approach (one full listing of the output bucket per row checked).

    .venv/bin/python benchmarks/bench_reconcile.py [--rows 10000] [--folders 10] [--original-sample 20]

The original approach costs N full listings; running all of them at N=10,000 would take hours against a
local server, so it is measured on `--original-sample` rows and its per-row cost multiplied by N (printed
as such). Never run by the tests.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--folders", type=int, default=10)
    parser.add_argument("--original-sample", type=int, default=20)
    args = parser.parse_args()

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request otherwise
    from moto.server import ThreadedMotoServer

    from cog_pipeline.run.claim import claim_one
    from cog_pipeline.publishing.reconcile import reconcile
    from cog_pipeline.storage.store import RequestCounter, StoreConfig, open_store

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        config = StoreConfig(endpoint=f"http://127.0.0.1:{port}", max_pool_connections=64)
        client = config.s3_client()
        client.create_bucket(Bucket="bench-in")
        client.create_bucket(Bucket="bench-out")
        n = args.rows
        keys = [f"Counties/C{i % args.folders:03d}/tile{i:06d}.tif" for i in range(n)]
        print(f"populating {2 * n:,} output objects on moto at 127.0.0.1:{port} ...", flush=True)
        started = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda k: (client.put_object(Bucket="bench-out", Key=k, Body=b""),
                                     client.put_object(Bucket="bench-out", Key=k[:-4] + ".jpg", Body=b"")), keys))
        print(f"  done in {time.perf_counter() - started:.0f} s")

        inputs = open_store("bench-in", config)
        inputs.put_bytes("bench_raw.csv", "".join(f"{k},3\n" for k in keys).encode())
        with tempfile.TemporaryDirectory() as work:
            claim = claim_one(inputs, inputs.head("bench_raw.csv"), work_dir=Path(work), output_bucket="bench-out",
                              store_config=config)
            assert claim is not None
            # Outputs were written before the claim; pretend the claim happened earlier so they count as fresh.
            info = claim.run_dir.load()
            info.claimed_at = None
            claim.run_dir.save(info)

            counter_out, counter_in = RequestCounter(), RequestCounter()
            started = time.perf_counter()
            result = reconcile(
                claim.run_dir,
                input_store=open_store("bench-in", config, counter_in),
                output_store=open_store("bench-out", config, counter_out),
            )
            ours_s = time.perf_counter() - started
        assert result.processed == n, result
        ours_requests = counter_out.total + counter_in.total

        # The original: for each row, list the whole output bucket and look for its COG and JPEG.
        sample = min(args.original_sample, n)
        counter_orig = RequestCounter()
        original = open_store("bench-out", config, counter_orig)
        started = time.perf_counter()
        for key in keys[:sample]:
            names = {o.key for o in original.list("")}
            assert key in names and key[:-4] + ".jpg" in names
        orig_sample_s = time.perf_counter() - started
        orig_requests = counter_orig.total / sample * n
        orig_s = orig_sample_s / sample * n

        budget = math.ceil(n / 1000) + 10
        print()
        print(f"reconcile of {n:,} rows in {args.folders} folders ({2 * n:,} output objects)")
        print(f"{'approach':<44}{'requests':>12}{'wall s':>12}")
        print(f"{'cog-pipeline (prefix listings)':<44}{ours_requests:>12,}{ours_s:>12.2f}")
        print(f"  output bucket: {dict(counter_out.by_operation)}; input bucket: {dict(counter_in.by_operation)}")
        print(f"{'original (full listing per row), extrapolated':<44}{orig_requests:>12,.0f}{orig_s:>12.0f}")
        print(f"  measured on {sample} rows: {counter_orig.total} requests in {orig_sample_s:.2f} s")
        print(f"ratio: {orig_requests / ours_requests:,.0f}x fewer requests, {orig_s / ours_s:,.0f}x less wall time")
        print(f"issue budget ceil(N/1000)+10 = {budget}; output-bucket listings alone: "
              f"{counter_out.total} (two objects per row: at least ceil(2N/1000) = {math.ceil(2 * n / 1000)} pages)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
