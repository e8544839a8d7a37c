"""Per-architecture export facts, kept beside the architectures the way Optimum keeps an OnnxConfig per model type:
the served model's inputs and their dynamic axes, the example and parity inputs, the exporter, the tolerance, and
the parameters a client needs. The exporter (training.export) asks these instead of testing architecture names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXAMPLE_BATCH = 2  # every dynamic dim >= 2 in the example: torch.export specializes a dim of 1
PARITY_BATCHES = (1, 3, 5, 33, 64)  # all differ from the example batch


def resize(X: np.ndarray, batch: int, steps: int | None = None) -> np.ndarray:
    """Rows (and time steps) of real data, repeated cyclically when more are needed than exist."""
    if steps is not None:
        X = np.concatenate([X] * (steps // X.shape[1] + 1), axis=1)[:, -steps:] if steps > X.shape[1] \
            else X[:, -steps:]
    return np.ascontiguousarray(np.resize(X, (batch, *X.shape[1:])), dtype=X.dtype)


@dataclass(frozen=True)
class OnnxConfig:
    """One input named `input`: a batch of the data's samples, in the form the architecture takes."""

    dynamo: bool = True  # False: the TorchScript exporter (Elman RNN: dynamo freezes its sequence length)
    dynamic_sequence: bool = False  # export with a dynamic sequence length too ([B, T] or [B, T, F])
    clear_rnn_cache: bool = False  # LSTM/GRU: a stale dispatch cache freezes the sequence length
    atol: float = 1e-5  # export parity tolerance

    def inputs(self, hyper: dict, sample: list[int]) -> list[dict]:
        """The served model's input tensors; shape -1 marks a dynamic dim (batch first, then the sequence)."""
        shape = [-1, *sample]
        if self.dynamic_sequence:
            shape[1] = -1
        return [{"name": "input", "datatype": "FP32", "shape": shape}]

    def sample_inputs(self, hyper: dict, X: np.ndarray) -> tuple[tuple, list[tuple]]:
        """(the export example, the inputs parity is checked at): real test rows at other batch sizes, and other
        sequence lengths where the sequence is dynamic."""
        parity = [(resize(X, b),) for b in PARITY_BATCHES]
        if self.dynamic_sequence:
            steps = X.shape[1]
            parity += [(resize(X, 4, t),) for t in (max(2, steps // 2), steps + 5)]
        return (resize(X, EXAMPLE_BATCH),), parity

    def task_params(self, hyper: dict) -> dict:
        """What a client needs to know about this architecture's inputs (the artifact's task_params)."""
        return {}

    def describe_inputs(self, hyper: dict) -> dict[str, str] | None:
        """What each input holds, when the inputs are not the data's samples (None: they are)."""
        return None


@dataclass(frozen=True)
class TransformerOnnxConfig(OnnxConfig):
    dynamic_sequence: bool = True

    def task_params(self, hyper: dict) -> dict:
        return {"max_sequence_length": hyper["max_len"]}  # its position table has max_len rows


@dataclass(frozen=True)
class GeneratorOnnxConfig(OnnxConfig):
    """A conditional generator: a standard-normal latent vector and a class index in, one image out."""

    def inputs(self, hyper: dict, sample: list[int]) -> list[dict]:
        return [{"name": "latent", "datatype": "FP32", "shape": [-1, hyper["latent_dim"]]},
                {"name": "label", "datatype": "INT64", "shape": [-1]}]

    def sample_inputs(self, hyper: dict, X: np.ndarray) -> tuple[tuple, list[tuple]]:
        rng = np.random.default_rng(0)

        def inputs(batch: int) -> tuple[np.ndarray, np.ndarray]:
            return (rng.standard_normal((batch, hyper["latent_dim"])).astype(np.float32),
                    (np.arange(batch) % hyper["num_classes"]).astype(np.int64))

        example = inputs(EXAMPLE_BATCH)
        return example, [inputs(b) for b in PARITY_BATCHES]

    def task_params(self, hyper: dict) -> dict:
        return {"latent_dim": hyper["latent_dim"], "output_range": [0.0, 1.0], "classes_input": "label",
                "noise_input": "latent"}

    def describe_inputs(self, hyper: dict) -> dict[str, str] | None:
        return {"latent": f"a standard-normal latent vector of {hyper['latent_dim']} values",
                "label": f"the class index, 0 to {hyper['num_classes'] - 1} (see `labels`)"}
