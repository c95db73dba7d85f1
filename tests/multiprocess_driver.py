"""One process of a multi-process speculative job on toy models (run by
tests/multiprocess_test.py; not a test module).

    python -m tests.multiprocess_driver WORKDIR NUM_PROCESSES PROCESS_ID PORT DEVICES MESH
        BATCH [die_after_records]

Each process gets DEVICES fake CPU devices; with NUM_PROCESSES > 1 it joins the others at
localhost:PORT. The job is the speculative job of experiments.run on the toy n-gram
sources. ``die_after_records``: process 1 exits hard after that many records (a crashed
host).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    workdir, count, index, port, devices, mesh, batch = argv[:7]
    die_after = int(argv[7]) if len(argv) > 7 else 0
    import jax

    jax.config.update("jax_num_cpu_devices", int(devices))
    from experiments.common import distributed

    if int(count) > 1:
        distributed.initialize(f"localhost:{port}", int(count), int(index), heartbeat_timeout=10)
    from experiments.configs import default
    from experiments.speculative import job, settings, sources

    arg = (
        "method=ar+sd:2+mrs:2x2+spectr:2x2+rsd_c:2-1+rsd_s:2x2+rsd_c:2-1/tv,"
        "dataset=humaneval+chat,num_prompts=4,max_new_tokens=8,progress=false,plots=false,"
        f"bootstrap=10,mesh={mesh},batch={batch},target_weights=float,draft_weights=float"
    )
    s = settings.from_config(default.get_config(arg))
    model_source, prompt_source = sources.toy_sources()
    seen = []

    def on_record(rec):
        seen.append(rec)
        if die_after and jax.process_index() == 1 and len(seen) >= die_after:
            os._exit(3)

    distributed.exit_on_peer_failure(
        lambda: job.run(
            s,
            workdir,
            model_source=model_source,
            prompt_source=prompt_source,
            on_record=on_record,
            log=lambda m: None,
        )  # fmt: skip
    )
    print(f"process {jax.process_index()} done: {len(seen)} records", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
