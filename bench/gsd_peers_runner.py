"""Fit one SmartNoise synthesizer ("mst" or "aim") the way its users run it and write its
synthetic table; ``bench/gsd.py`` starts it in a subprocess under the peer interpreter
(``--peer-python``: an environment with ``smartnoise-synth``, which pins its own ``opendp`` and
``mbi`` and so lives apart from bbzo's).

    python bench/gsd_peers_runner.py '{"method": "mst", "data": "adult.csv", "epsilon": 1.0,
        "delta": 4.2e-10, "seed": 0, "rows": 48842, "max_model_size": 10, "out": "mst.csv"}'

Every column is passed as categorical with ``preprocessor_eps=0`` (SmartNoise then reads the
categories off the data, without charging ε: its users' default, not a private choice). The
last stdout line is JSON: ``{"seconds": wall, "cpu_seconds": process CPU, "rows": n}``.
"""

import json
import random
import sys
import time

import numpy as np
import pandas as pd
from snsynth import Synthesizer


def main() -> None:
    spec = json.loads(sys.argv[1])
    data = pd.read_csv(spec["data"])
    options = {"max_model_size": spec["max_model_size"]} if spec["method"] == "aim" else {}
    random.seed(spec["seed"])
    np.random.seed(spec["seed"])
    began, cpu = time.perf_counter(), time.process_time()
    synthesizer = Synthesizer.create(spec["method"], epsilon=spec["epsilon"],
                                     delta=spec["delta"], **options)
    synthesizer.fit(data, categorical_columns=list(data.columns), preprocessor_eps=0.0)
    sample = synthesizer.sample(spec["rows"])
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    table = sample if isinstance(sample, pd.DataFrame) else pd.DataFrame(
        list(sample), columns=data.columns)
    table.to_csv(spec["out"], index=False)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "rows": len(table)}))


if __name__ == "__main__":
    main()
