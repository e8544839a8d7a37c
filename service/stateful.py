"""One request of a stateful model (config.pbtxt's sequence_batching), as Triton's sequence batcher runs it.

The request's parameters name the sequence (`sequence_id`, an unsigned integer or a string) and mark its first
and last request (`sequence_start`, `sequence_end`). The sequence's slot in the shared table
(service/sequences.py) is held for the whole request: the control inputs are made from the flags, the state
inputs from the slot's bytes (or the initial state after START), the model runs, and its state outputs are kept
in the slot for the next request. The client's answer holds only the outputs it asked for.
"""

from __future__ import annotations

import numpy as np

from service.errors import BadRequest, ConfigError, InferenceFailed
from service.protocol import InferRequest
from service.sequences import SequenceId


def _flag(parameters: dict, key: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"parameters.{key}: expected true or false, got {str(value)[:40]!r}")
    return value


def run_step(model, request: InferRequest, feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """Run one request of a sequence on `model` (a runtime.LoadedModel with a sequence table); the outputs asked."""
    parameters = request.parameters
    sid = SequenceId.parse(parameters.get("sequence_id"), model.name)
    if sid is None:
        raise BadRequest(f"inference request to model '{model.name}' must specify a non-zero or non-empty "
                         "correlation ID")
    start, end = _flag(parameters, "sequence_start"), _flag(parameters, "sequence_end")
    if model.batching and any(array.shape[0] != 1 for array in feed.values()):
        raise BadRequest(f"inference request to model '{model.name}' must specify batch-size 1 due to requirements "
                         "of sequence batcher")
    sequence = model.sequence
    kept = [s.output_name for s in sequence.states if s.output_name not in outputs]
    with model.sequences.step(sid, start, end) as step:
        extra = sequence.feed(sid.value, start, end, step.state, model.batching)
        values = model.run({**feed, **extra}, outputs + kept)
        try:
            step.save(sequence.saved(values, model.batching))
        except ConfigError as exc:  # the graph returned a state of another shape than config.pbtxt declares
            raise InferenceFailed(f"inference failed for model '{model.name}' version {model.version}: "
                                  f"{exc}") from None
    return {name: values[name] for name in outputs}
