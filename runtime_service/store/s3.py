"""The S3 store: a bucket prefix reached through the minio client (MinIO, AWS S3, rclone serve s3).

Each object is one PUT (or one multipart upload, which S3 only shows once completed), so a killed
upload leaves nothing readable. The file's sha256 rides along as object metadata so that a later
publish can keep objects that are already right. The client is made with an explicit region:
minio-py only parses the text/xml error bodies some S3 servers send when the region is set.
"""

from __future__ import annotations

import io
import ssl
from pathlib import Path

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error
from minio.helpers import check_bucket_name as minio_check_bucket_name

from runtime_service.format.engine_format import check_relative_path
from runtime_service.errors import EngineNotFound, InvalidRequest, PermissionDenied, Unavailable
from runtime_service.store.base import ObjectInfo, S3Settings, Store, split_s3_uri

PART_BYTES = 16 << 20
SHA256_META = "x-amz-meta-kiln-sha256"
_MISSING = ("NoSuchKey", "NoSuchObject", "ResourceNotFound")
_DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")


def make_client(settings: S3Settings) -> Minio:
    http = urllib3.PoolManager(
        maxsize=settings.max_connections, cert_reqs=ssl.CERT_REQUIRED, ca_certs=settings.ca_file,
        timeout=urllib3.Timeout(connect=10, read=120),
        retries=urllib3.Retry(total=3, backoff_factor=0.2,
                              status_forcelist=[500, 502, 503, 504]))
    return Minio(settings.endpoint, access_key=settings.access_key,
                 secret_key=settings.secret_key, secure=settings.secure,
                 region=settings.region, http_client=http)


def check_bucket_name(bucket: str) -> str:
    """Refuses a name S3 would refuse, before any request: a wrong name is the user's to fix,
    not an outage to retry."""
    try:
        minio_check_bucket_name(bucket, strict=True)
    except ValueError as exc:
        raise InvalidRequest(
            f"S3 bucket name {bucket!r} is invalid: bucket names are 3-63 characters of a-z, 0-9, "
            f"'.' and '-' that begin and end with a letter or digit, hold no '..' and are not an "
            f"IP address") from exc
    return bucket


def _is_missing(exc: Exception) -> bool:
    if isinstance(exc, S3Error):
        return exc.code in _MISSING
    return isinstance(exc, InvalidResponseError) and getattr(exc, "_code", None) == 404


def _translate(exc: Exception, what: str) -> Exception:
    """S3 and connection errors as Kiln's typed errors, so callers map them to gRPC codes.
    Anything unrecognised counts as an outage, so arguments are checked before the request."""
    if isinstance(exc, S3Error):
        if exc.code in _DENIED:
            return PermissionDenied(f"S3 refused {what}: {exc.code}")
        if exc.code == "NoSuchBucket":
            return EngineNotFound(f"S3 bucket for {what} does not exist")
        return Unavailable(f"S3 error on {what}: {exc.code} {exc.message}")
    if isinstance(exc, InvalidResponseError):  # an error body minio-py could not parse
        status = getattr(exc, "_code", None)
        if status in (401, 403):
            return PermissionDenied(f"S3 refused {what}: HTTP {status}")
        if status == 404:
            return EngineNotFound(f"S3 has nothing at {what}")
    return Unavailable(f"S3 unreachable on {what}: {exc}")


class S3Store(Store):
    """Objects under s3://bucket/prefix/."""

    def __init__(self, client: Minio, bucket: str, prefix: str = ""):
        self.client = client
        self.bucket = check_bucket_name(bucket)
        self.prefix = prefix.rstrip("/")
        if self.prefix:
            check_relative_path(self.prefix)
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")

    @classmethod
    def from_uri(cls, uri: str, settings: S3Settings) -> "S3Store":
        bucket, prefix = split_s3_uri(uri)
        return cls(make_client(settings), bucket, prefix)

    def _key(self, key: str) -> str:
        check_relative_path(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def child_uri(self, key: str) -> str:
        return f"{self.uri}/{check_relative_path(key)}"

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        full = (self._key(prefix) if prefix else self.prefix)
        full = f"{full}/" if full else ""
        strip = len(f"{self.prefix}/") if self.prefix else 0
        try:
            return sorted((ObjectInfo(obj.object_name[strip:], obj.size, etag=obj.etag)
                           for obj in self.client.list_objects(self.bucket, prefix=full,
                                                               recursive=True)
                           if not obj.is_dir), key=lambda info: info.key)
        except Exception as exc:
            raise _translate(exc, f"listing {self.uri}/{prefix}") from exc

    def stat(self, key: str) -> ObjectInfo | None:
        name = self._key(key)
        try:
            result = self.client.stat_object(self.bucket, name)
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise _translate(exc, f"stat {key}") from exc
        meta = {k.lower(): v for k, v in (result.metadata or {}).items()}
        return ObjectInfo(key, result.size, meta.get(SHA256_META))

    def put_file(self, key: str, path: Path, sha256: str | None = None) -> None:
        metadata = {SHA256_META: sha256} if sha256 else None
        name = self._key(key)
        try:
            self.client.fput_object(self.bucket, name, str(path), metadata=metadata,
                                    part_size=PART_BYTES, num_parallel_uploads=4)
        except Exception as exc:
            raise _translate(exc, f"upload {key}") from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        name = self._key(key)
        try:
            self.client.put_object(self.bucket, name, io.BytesIO(data), len(data))
        except Exception as exc:
            raise _translate(exc, f"upload {key}") from exc

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        # S3 servers without conditional writes leave a window between the check and the PUT;
        # the only writers of a key are builds of the same engine key, whose bytes are identical.
        if self.stat(key) is not None:
            return False
        self.put_bytes(key, data)
        return True

    def read_bytes(self, key: str) -> bytes | None:
        name = self._key(key)
        try:
            response = self.client.get_object(self.bucket, name)
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise _translate(exc, f"read {key}") from exc
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        name = self._key(key)
        try:
            response = self.client.get_object(self.bucket, name, offset=offset, length=length)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()
        except Exception as exc:
            raise _translate(exc, f"read {key}") from exc

    def get_file(self, key: str, dest: Path) -> None:
        name = self._key(key)
        try:
            self.client.fget_object(self.bucket, name, str(dest))
        except Exception as exc:
            raise _translate(exc, f"download {key}") from exc

    def delete(self, key: str) -> None:
        name = self._key(key)
        try:
            self.client.remove_object(self.bucket, name)
        except Exception as exc:
            if not _is_missing(exc):
                raise _translate(exc, f"delete {key}") from exc
