"""`ModelConfig` and `ParallelConfig`: what model to serve, split how, built how.

`model_dir` is an HF folder, a Kiln checkpoint or a Kiln engine, local or `s3://`; the Builder tells
them apart, and `model_format` says which for a local folder. A local checkpoint or engine
carries its tp/pp split, which ModelConfig adopts (a different explicit split is refused), so a
checkpoint converted with tp=2 is served with tp=2. Build limits left as None take the Builder's
defaults, except dtype, which the SDK picks from the runtime's device.
"""

from __future__ import annotations

import enum
from dataclasses import KW_ONLY, dataclass, field

from kiln._checks import Checked, boolean, instance, integer, text
from kiln.build_config import DTYPES, BuildConfig, PluginConfig  # noqa: F401 - re-exported
from kiln.errors import InvalidArgument
from kiln.local_folder import folder_config, folder_mapping
from kiln.quantization import QuantConfig


@dataclass(slots=True)
class ParallelConfig(Checked):
    """tp_size x pp_size ranks. `world_size` follows them unless auto_parallel sets it."""

    tp_size: int = 1
    pp_size: int = 1
    auto_parallel: bool = False
    _world_size: int | None = field(default=None, repr=False)
    _devices: list[int] | None = field(default=None, repr=False)

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

    @property
    def devices(self) -> list[int]:
        """The GPU ordinals the ranks run on: 0..world_size-1 unless set."""
        return list(self._devices) if self._devices is not None else list(range(self.world_size))

    @devices.setter
    def devices(self, devices: list[int]) -> None:
        if not isinstance(devices, (list, tuple)) or len(devices) != self.world_size or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in devices):
            raise InvalidArgument(f"ParallelConfig.devices must list {self.world_size} GPU "
                                  f"ordinals (one per rank), got {devices!r}")
        self._devices = list(devices)

    @property
    def is_multi_gpu(self) -> bool:
        return self.world_size > 1


ParallelConfig._checks = {"tp_size": integer(1, 4096), "pp_size": integer(1, 4096),
                          "auto_parallel": boolean}


class ModelFormatKind(enum.Enum):
    """What a local model_dir holds (the HLAPI's _ModelFormatKind)."""

    HF = 0
    TLLM_CKPT = 1
    TLLM_ENGINE = 2


def model_format(model_dir: str) -> ModelFormatKind | None:
    """The kind of a local folder from its config.json; None for s3:// or an unreadable one."""
    config = folder_config(model_dir)
    if config is None:
        return None
    kind = config.get("format")
    if kind == "kiln-engine":
        return ModelFormatKind.TLLM_ENGINE
    if kind == "kiln-checkpoint":
        return ModelFormatKind.TLLM_CKPT
    return ModelFormatKind.HF


@dataclass(slots=True)
class ModelConfig(Checked):
    model_dir: str
    model: object = None
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)
    quant_config: QuantConfig = field(default_factory=QuantConfig)
    _: KW_ONLY
    build_config: BuildConfig = field(default_factory=BuildConfig)
    max_beam_width: int = 1
    model_format: ModelFormatKind | None = field(default=None, init=False)

    def __post_init__(self):
        if self.model is not None:
            raise InvalidArgument("ModelConfig.model (a model name or an in-memory module) is "
                                  "not available in Kiln; give model_dir")
        object.__setattr__(self, "model_format", model_format(self.model_dir))
        if self.model_format in (ModelFormatKind.TLLM_CKPT, ModelFormatKind.TLLM_ENGINE):
            self._adopt_mapping()

    def _adopt_mapping(self) -> None:
        """The folder's tp/pp split becomes parallel_config's; an explicit other one is refused."""
        mapping = folder_mapping(self.model_dir)
        if mapping is None:
            return
        tp, pp = mapping
        asked = self.parallel_config
        for name, mine, theirs in (("tp_size", asked.tp_size, tp), ("pp_size", asked.pp_size, pp)):
            if mine not in (1, theirs):
                raise InvalidArgument(f"parallel_config.{name}={mine} does not match the "
                                      f"{self.model_format.name} folder's {name}={theirs}")
        if asked.auto_parallel and tp * pp > 1:
            raise InvalidArgument("auto_parallel does not apply to a folder already split in "
                                  f"tp={tp} x pp={pp}")
        if not asked.auto_parallel:
            self.parallel_config = ParallelConfig(tp_size=tp, pp_size=pp)

    @property
    def beam_width_limit(self) -> int:
        """The engine's max_beam_width: BuildConfig's, or the older ModelConfig spelling."""
        return max(self.build_config.max_beam_width or 1, self.max_beam_width)

    def _update_plugin_config(self, key: str, value) -> None:
        """Sets one PluginConfig switch (the HLAPI's helper), validated like any field."""
        if not hasattr(self.build_config.plugin_config, key):
            raise InvalidArgument(f"PluginConfig has no field {key}")
        setattr(self.build_config.plugin_config, key, value)


ModelConfig._checks = {"model_dir": text(), "max_beam_width": integer(1, 64),
                       "quant_config": instance(QuantConfig),
                       "parallel_config": instance(ParallelConfig),
                       "build_config": instance(BuildConfig)}
