"""Where engines live: the Store interface, local and S3 stores, verified parallel pulls,
folders that appear whole or not at all.

Callers outside this package use the names below; `s3.py` (and the minio client) is imported only
when an `s3://` URI is opened.
"""

from runtime_service.store.base import (ObjectInfo, ProgressFn, S3Settings, Store, check_engine_key,
                                        check_engine_name, split_s3_uri)
from runtime_service.store.local import LocalStore
from runtime_service.store.pull import fetch_engine, open_store, pull_engine

__all__ = ["LocalStore", "ObjectInfo", "ProgressFn", "S3Settings", "Store", "check_engine_key",
           "check_engine_name", "fetch_engine", "open_store", "pull_engine", "split_s3_uri"]
