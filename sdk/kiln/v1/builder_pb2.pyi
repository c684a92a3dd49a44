from kiln.v1 import engine_pb2 as _engine_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BuildRequest(_message.Message):
    __slots__ = ("source", "name", "settings")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    source: str
    name: str
    settings: _engine_pb2.BuildSettings
    def __init__(self, source: _Optional[str] = ..., name: _Optional[str] = ..., settings: _Optional[_Union[_engine_pb2.BuildSettings, _Mapping]] = ...) -> None: ...

class BuildProgress(_message.Message):
    __slots__ = ("stage", "done", "total", "unit", "message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    unit: str
    message: str
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., unit: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class BuildResult(_message.Message):
    __slots__ = ("engine", "cached")
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    engine: _engine_pb2.EngineSummary
    cached: bool
    def __init__(self, engine: _Optional[_Union[_engine_pb2.EngineSummary, _Mapping]] = ..., cached: _Optional[bool] = ...) -> None: ...

class BuildEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: BuildProgress
    result: BuildResult
    def __init__(self, progress: _Optional[_Union[BuildProgress, _Mapping]] = ..., result: _Optional[_Union[BuildResult, _Mapping]] = ...) -> None: ...

class GetEngineRequest(_message.Message):
    __slots__ = ("engine",)
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    engine: str
    def __init__(self, engine: _Optional[str] = ...) -> None: ...

class ListEnginesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEnginesResponse(_message.Message):
    __slots__ = ("engines",)
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    engines: _containers.RepeatedCompositeFieldContainer[_engine_pb2.EngineSummary]
    def __init__(self, engines: _Optional[_Iterable[_Union[_engine_pb2.EngineSummary, _Mapping]]] = ...) -> None: ...

class DeleteEngineRequest(_message.Message):
    __slots__ = ("engine",)
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    engine: str
    def __init__(self, engine: _Optional[str] = ...) -> None: ...

class DeleteEngineResponse(_message.Message):
    __slots__ = ("engine_key",)
    ENGINE_KEY_FIELD_NUMBER: _ClassVar[int]
    engine_key: str
    def __init__(self, engine_key: _Optional[str] = ...) -> None: ...

class FindMissingBlobsRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sha256: _Optional[_Iterable[str]] = ...) -> None: ...

class FindMissingBlobsResponse(_message.Message):
    __slots__ = ("missing",)
    MISSING_FIELD_NUMBER: _ClassVar[int]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, missing: _Optional[_Iterable[str]] = ...) -> None: ...

class SourceFile(_message.Message):
    __slots__ = ("path", "sha256", "size_bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    size_bytes: int
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class SourceFileList(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[SourceFile]
    def __init__(self, files: _Optional[_Iterable[_Union[SourceFile, _Mapping]]] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("sha256", "offset", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class SourceChunk(_message.Message):
    __slots__ = ("files", "blob")
    FILES_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    files: SourceFileList
    blob: BlobChunk
    def __init__(self, files: _Optional[_Union[SourceFileList, _Mapping]] = ..., blob: _Optional[_Union[BlobChunk, _Mapping]] = ...) -> None: ...

class SourceRef(_message.Message):
    __slots__ = ("source_id", "uri", "size_bytes", "received_bytes", "num_files")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_FILES_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    uri: str
    size_bytes: int
    received_bytes: int
    num_files: int
    def __init__(self, source_id: _Optional[str] = ..., uri: _Optional[str] = ..., size_bytes: _Optional[int] = ..., received_bytes: _Optional[int] = ..., num_files: _Optional[int] = ...) -> None: ...
