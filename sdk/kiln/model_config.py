"""`ModelConfig` and its parts: what model to serve and what engine to build for it.

`model_dir` is an HF folder, a Kiln checkpoint or a Kiln engine, local or `s3://`; the Builder tells
them apart. Build limits left as None take the Builder's defaults, except dtype, which the SDK
picks from the runtime's device (float32 on a CPU, bfloat16 on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln._checks import Checked, boolean, instance, integer, text
from kiln.errors import InvalidArgument
from kiln.quantization import QuantConfig

DTYPES = ("float32", "float16", "bfloat16")


@dataclass(slots=True)
class ParallelConfig(Checked):
    """tp_size x pp_size ranks. `world_size` follows them unless auto_parallel sets it."""

    tp_size: int = 1
    pp_size: int = 1
    auto_parallel: bool = False
    _world_size: int | None = field(default=None, repr=False)

    @property
    def world_size(self) -> int:
        if self.auto_parallel and self._world_size is not None:
            return self._world_size
        return self.tp_size * self.pp_size

    @world_size.setter
    def world_size(self, value: int) -> None:
        value = integer(1, 4096)("ParallelConfig.world_size", value)
        if not self.auto_parallel and value != self.tp_size * self.pp_size:
            raise InvalidArgument(
                f"ParallelConfig.world_size={value} must equal tp_size*pp_size="
                f"{self.tp_size * self.pp_size} unless auto_parallel is set")
        self._world_size = value


ParallelConfig._checks = {"tp_size": integer(1, 4096), "pp_size": integer(1, 4096),
                          "auto_parallel": boolean}


def _dtype(name: str, value):
    if value is not None and value not in DTYPES:
        raise InvalidArgument(f"{name} must be one of {', '.join(DTYPES)} or None, got {value!r}")
    return value


@dataclass(slots=True)
class BuildConfig(Checked):
    """The engine's serving limits; None takes the Builder's default."""

    dtype: str | None = None
    max_batch_size: int | None = None
    max_input_len: int | None = None
    max_seq_len: int | None = None
    max_num_tokens: int | None = None


BuildConfig._checks = {"dtype": _dtype,
                       **{name: integer(1, 1 << 20, optional=True)
                          for name in ("max_batch_size", "max_input_len", "max_seq_len",
                                       "max_num_tokens")}}


@dataclass(slots=True)
class ModelConfig(Checked):
    model_dir: str
    max_beam_width: int = 1
    quant_config: QuantConfig = field(default_factory=QuantConfig)
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)
    build_config: BuildConfig = field(default_factory=BuildConfig)


ModelConfig._checks = {"model_dir": text(), "max_beam_width": integer(1, 64),
                       "quant_config": instance(QuantConfig),
                       "parallel_config": instance(ParallelConfig),
                       "build_config": instance(BuildConfig)}
