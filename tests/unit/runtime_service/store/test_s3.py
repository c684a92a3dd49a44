"""The S3 store's input checks: a wrong URI, bucket or key is the user's error (InvalidRequest,
exit 2), refused before any request; only a failed request is an outage (Unavailable, exit 75)."""

import pytest
import urllib3
from minio import Minio

from runtime_service.errors import InvalidRequest, Unavailable
from runtime_service.store import S3Settings, open_store, split_s3_uri
from runtime_service.store.s3 import S3Store
from support.servers import free_port

NOTHING_LISTENS = S3Settings(endpoint="127.0.0.1:9", access_key="x", secret_key="y")


def unreachable_store(prefix=""):
    """A store whose every request fails at once: nothing listens on its port, no retries."""
    client = Minio(f"127.0.0.1:{free_port()}", access_key="x", secret_key="y", secure=False,
                   region="us-east-1", http_client=urllib3.PoolManager(retries=False))
    return S3Store(client, "kiln", prefix)


@pytest.mark.parametrize("uri, bucket, key", [
    ("s3://kiln/engines", "kiln", "engines"),
    ("s3://kiln", "kiln", ""),
    ("s3://kiln/", "kiln", ""),
    ("s3://kiln/data./calib.txt", "kiln", "data./calib.txt"),
    ("s3://kiln/v1.../c.txt", "kiln", "v1.../c.txt"),
    ("s3://kiln/a?b#c", "kiln", "a?b#c"),
])
def test_s3_uris_split_into_bucket_and_the_key_exactly_as_written(uri, bucket, key):
    assert split_s3_uri(uri) == (bucket, key)


@pytest.mark.parametrize("uri", ["s3:///x", "s3://", "s3:/kiln/x", "http://kiln/x", "kiln/x"])
def test_s3_uris_without_a_bucket_are_refused(uri):
    with pytest.raises(InvalidRequest, match="expected s3://bucket/key"):
        split_s3_uri(uri)


@pytest.mark.parametrize("bucket", ["Bad_Bucket!!", "UPPER", "ab", "a" * 64, "-lead", "trail-",
                                    "a..b", "a.-b", "192.168.1.1", "kiln:9000", "user@kiln",
                                    "under_score"])
def test_an_invalid_bucket_name_is_an_invalid_request_before_any_request(bucket):
    with pytest.raises(InvalidRequest, match="bucket name .* is invalid") as raised:
        open_store(f"s3://{bucket}/engines", NOTHING_LISTENS)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("uri, store_uri", [("s3://kiln/engines/", "s3://kiln/engines"),
                                            ("s3://my.bucket-1", "s3://my.bucket-1"),
                                            ("s3://" + "a" * 63 + "/p", "s3://" + "a" * 63 + "/p")])
def test_valid_bucket_names_open(uri, store_uri):
    assert open_store(uri, NOTHING_LISTENS).uri == store_uri


@pytest.mark.parametrize("uri", ["s3://kiln//engines", "s3://kiln/a/../b", "s3://kiln/a/./b"])
def test_store_prefixes_with_empty_or_dot_parts_are_refused(uri):
    with pytest.raises(InvalidRequest, match="unsafe relative path"):
        open_store(uri, NOTHING_LISTENS)


@pytest.mark.parametrize("key", ["", "../x", "a//b", "/abs", "a/./b"])
@pytest.mark.parametrize("call", [
    lambda store, key: store.stat(key),
    lambda store, key: store.read_bytes(key),
    lambda store, key: store.read_range(key, 0, 1),
    lambda store, key: store.put_bytes(key, b"x"),
    lambda store, key: store.delete(key),
    lambda store, key: store.get_file(key, "/nonexistent/dest"),
], ids=["stat", "read_bytes", "read_range", "put_bytes", "delete", "get_file"])
def test_an_unsafe_key_is_an_invalid_request_not_an_outage(key, call):
    with pytest.raises(InvalidRequest, match="unsafe relative path"):
        call(unreachable_store("engines"), key)


@pytest.mark.parametrize("call", [
    lambda store: store.stat("x.txt"),
    lambda store: store.read_bytes("x.txt"),
    lambda store: store.list_objects(""),
], ids=["stat", "read_bytes", "list_objects"])
def test_a_server_that_cannot_be_reached_is_still_unavailable(call):
    with pytest.raises(Unavailable, match="S3 unreachable"):
        call(unreachable_store())
