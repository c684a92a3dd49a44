from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EngineRef(_message.Message):
    __slots__ = ("engine_key", "uri", "name")
    ENGINE_KEY_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    engine_key: str
    uri: str
    name: str
    def __init__(self, engine_key: _Optional[str] = ..., uri: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class QuantSettings(_message.Message):
    __slots__ = ("algo", "group_size", "kv_cache_dtype", "calib_data", "calib_num_samples", "calib_seq_len", "calib_sha256", "exclude_modules")
    ALGO_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    CALIB_DATA_FIELD_NUMBER: _ClassVar[int]
    CALIB_NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CALIB_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    CALIB_SHA256_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_MODULES_FIELD_NUMBER: _ClassVar[int]
    algo: str
    group_size: int
    kv_cache_dtype: str
    calib_data: str
    calib_num_samples: int
    calib_seq_len: int
    calib_sha256: str
    exclude_modules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, algo: _Optional[str] = ..., group_size: _Optional[int] = ..., kv_cache_dtype: _Optional[str] = ..., calib_data: _Optional[str] = ..., calib_num_samples: _Optional[int] = ..., calib_seq_len: _Optional[int] = ..., calib_sha256: _Optional[str] = ..., exclude_modules: _Optional[_Iterable[str]] = ...) -> None: ...

class ParallelSettings(_message.Message):
    __slots__ = ("tp_size", "pp_size")
    TP_SIZE_FIELD_NUMBER: _ClassVar[int]
    PP_SIZE_FIELD_NUMBER: _ClassVar[int]
    tp_size: int
    pp_size: int
    def __init__(self, tp_size: _Optional[int] = ..., pp_size: _Optional[int] = ...) -> None: ...

class TargetSettings(_message.Message):
    __slots__ = ("device", "capability")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    device: str
    capability: str
    def __init__(self, device: _Optional[str] = ..., capability: _Optional[str] = ...) -> None: ...

class BuildSettings(_message.Message):
    __slots__ = ("dtype", "max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "max_beam_width", "quant", "parallel", "target")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_BEAM_WIDTH_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int
    max_beam_width: int
    quant: QuantSettings
    parallel: ParallelSettings
    target: TargetSettings
    def __init__(self, dtype: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., max_input_len: _Optional[int] = ..., max_seq_len: _Optional[int] = ..., max_num_tokens: _Optional[int] = ..., max_beam_width: _Optional[int] = ..., quant: _Optional[_Union[QuantSettings, _Mapping]] = ..., parallel: _Optional[_Union[ParallelSettings, _Mapping]] = ..., target: _Optional[_Union[TargetSettings, _Mapping]] = ...) -> None: ...

class EngineSummary(_message.Message):
    __slots__ = ("ref", "settings", "architecture", "size_bytes", "num_files", "builder_version", "format_version")
    REF_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_FILES_FIELD_NUMBER: _ClassVar[int]
    BUILDER_VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ref: EngineRef
    settings: BuildSettings
    architecture: str
    size_bytes: int
    num_files: int
    builder_version: str
    format_version: int
    def __init__(self, ref: _Optional[_Union[EngineRef, _Mapping]] = ..., settings: _Optional[_Union[BuildSettings, _Mapping]] = ..., architecture: _Optional[str] = ..., size_bytes: _Optional[int] = ..., num_files: _Optional[int] = ..., builder_version: _Optional[str] = ..., format_version: _Optional[int] = ...) -> None: ...
