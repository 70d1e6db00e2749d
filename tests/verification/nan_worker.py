"""A hostile worker for tests: the real worker (`python -m troop_worker`), except that the
output evidence it signs claims NaN for every token's log-probability. Troop's own
worker clamps a non-finite value; a worker built from other code signs whatever it likes,
and every comparison with a NaN is false.

    python -m tests.verification.nan_worker   # the worker's settings, as for troop_worker
"""

from __future__ import annotations

import math
import runpy

from troop_common import evidence
from troop_common.proto import inference_pb2


def _nan_logprob(self: evidence.TokenEvidence) -> inference_pb2.TokenLogprob:
    return inference_pb2.TokenLogprob(token=self.token, logprob=math.nan)


evidence.TokenEvidence.to_pb = _nan_logprob  # type: ignore[method-assign]

if __name__ == "__main__":
    runpy.run_module("troop_worker", run_name="__main__", alter_sys=True)
