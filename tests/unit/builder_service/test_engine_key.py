import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from builder_service.engine_key import engine_key, source_digest
from runtime_service.format.engine_config import BuildConfig, Mapping, QuantConfig, Target
from runtime_service.errors import InvalidRequest

SOURCE = "a" * 64
BASE = dict(build=BuildConfig(dtype="float32", max_seq_len=256, max_input_len=128),
            quant=QuantConfig(), mapping=Mapping(2, 1), target=Target())


def key(**changes):
    args = {**BASE, **changes}
    return engine_key(changes.pop("source", SOURCE), args["build"], args["quant"],
                      args["mapping"], args["target"], args.get("format_version", 1))


def test_same_source_and_settings_give_the_same_key():
    assert key() == key()
    assert len(key()) == 64 and int(key(), 16) >= 0


@pytest.mark.parametrize("changes", [
    dict(source="b" * 64),
    dict(build=BuildConfig(dtype="bfloat16", max_seq_len=256, max_input_len=128)),
    dict(build=BuildConfig(dtype="float32", max_seq_len=256, max_input_len=128,
                           max_batch_size=8)),
    dict(build=BuildConfig(dtype="float32", max_seq_len=256, max_input_len=128,
                           max_beam_width=4)),
    dict(quant=QuantConfig(group_size=64)),
    dict(mapping=Mapping(1, 2)),
    dict(target=Target(device="cuda", capability="9.0")),
    dict(format_version=2),
])
def test_any_setting_change_gives_another_key(changes):
    assert key(**changes) != key()


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8})?", fullmatch=True),
                       st.from_regex(r"[0-9a-f]{64}", fullmatch=True), min_size=1, max_size=8),
       st.randoms())
def test_source_digest_ignores_file_order_but_not_content(files, rnd):
    items = list(files.items())
    shuffled = items[:]
    rnd.shuffle(shuffled)
    assert source_digest(items) == source_digest(shuffled)
    path, sha = items[0]
    changed = [(path, ("0" if sha[0] != "0" else "1") + sha[1:])] + items[1:]
    assert source_digest(changed) != source_digest(items)


def test_source_digest_refuses_unsafe_paths():
    with pytest.raises(InvalidRequest):
        source_digest([("../etc/passwd", "0" * 64)])


def test_key_document_covers_every_build_field():
    fields = {f.name for f in dataclasses.fields(BuildConfig)}
    for name in fields - {"dtype"}:
        bumped = dataclasses.replace(BASE["build"], **{name: getattr(BASE["build"], name) + 1})
        if name == "max_input_len":
            bumped = dataclasses.replace(bumped, max_seq_len=bumped.max_seq_len + 1)
        assert key(build=bumped) != key(), name
