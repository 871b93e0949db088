"""The row-group index of the lookup tables against a plain filtered scan of the same files."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from recsys_spark.serving.row_groups import RowGroupIndex

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys_spark.config.schema import Config


def _write(path: Path, users: list[int], per_user: int, row_group_size: int) -> None:
    rows = [(f"u{u:05d}", r, u * 7 + r) for u in users for r in range(1, per_user + 1)]
    table = pa.table(
        {
            "user_id": [r[0] for r in rows],
            "rank": pa.array([r[1] for r in rows], pa.int32()),
            "item_idx": pa.array([r[2] for r in rows], pa.int32()),
            "source": ["als"] * len(rows),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)


def _scan(paths: list[Path], keys: list[str]) -> list[tuple]:
    t = pads.dataset([str(p) for p in paths]).to_table(filter=pc.field("user_id").isin(keys))
    return sorted(zip(*(t[c].to_pylist() for c in ("user_id", "rank", "item_idx", "source"))))


@pytest.mark.parametrize("dictionary", [["source"], ["source", "user_id"]])
def test_keys_straddling_row_groups_and_files_come_back_whole(tmp_path: Path, dictionary: list[str]) -> None:
    # 7 rows per user in row groups of 5: most users straddle two groups
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    _write(paths[0], list(range(0, 40)), 7, 5)
    _write(paths[1], list(range(40, 90)), 7, 5)
    index = RowGroupIndex.build([str(p) for p in paths], "user_id")
    assert index is not None
    rng = random.Random(0)
    for keys in [["u00000"], ["u00039"], ["u00040"], ["u00089"], [f"u{rng.randrange(90):05d}" for _ in range(9)]]:
        got = index.read("user_id", keys, ["user_id", "rank", "item_idx", "source"], dictionary)
        assert sorted(zip(*(got[c].to_pylist() for c in got.column_names))) == _scan(paths, keys)
    # unknown keys, below, between and above every range
    for missing in ("a", "u00039x", "zzz"):
        assert index.read("user_id", [missing], ["rank"], dictionary).num_rows == 0


def test_a_keys_rows_spread_inside_a_row_group_are_all_found_in_order(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    users = ["u1", "u2", "u1", "u3", "u1", "u3"]  # one row group holding u1's rows apart
    pq.write_table(pa.table({"user_id": users, "rank": pa.array(range(6), pa.int32())}), path)
    index = RowGroupIndex.build([str(path)], "user_id")
    assert index is not None
    for key, ranks in (("u1", [0, 2, 4]), ("u2", [1]), ("u3", [3, 5])):
        got = index.read("user_id", [key], ["user_id", "rank"], ["user_id"])
        assert got["rank"].to_pylist() == ranks and set(got["user_id"].to_pylist()) == {key}


def test_files_not_sorted_by_the_key_are_not_indexed(tmp_path: Path) -> None:
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    _write(paths[0], [0, 50, 99], 3, 2)  # ranges overlap the other file's
    _write(paths[1], [10, 60], 3, 2)
    assert RowGroupIndex.build([str(p) for p in paths], "user_id") is None
    assert RowGroupIndex.build([str(paths[0])], "no_such_column") is None


@pytest.mark.parametrize("row_group_size", [1, 3, 1000])
def test_one_user_in_many_row_groups(tmp_path: Path, row_group_size: int) -> None:
    path = tmp_path / "a.parquet"
    _write(path, [1, 2, 3], 10, row_group_size)
    index = RowGroupIndex.build([str(path)], "user_id")
    assert index is not None
    got = index.read("user_id", ["u00002"], ["rank"], [])
    assert sorted(got["rank"].to_pylist()) == list(range(1, 11))


def test_item_ids_unknown_to_the_catalogue_snapshot_are_read_from_the_table(
    spark: SparkSession, base_config: Config, tmp_path: Path
) -> None:
    from recsys_spark import tables as T
    from recsys_spark.serving.lookup import Recommendations
    from recsys_spark.storage.store import CommitInfo, TableStore

    commit = CommitInfo("test", "run-ids", "cfg")
    store = TableStore(spark, base_config.with_overrides([f"storage.root={tmp_path}"]).storage)
    store.write(
        spark.createDataFrame(
            [("u1", 1, r, f"item-{r}", r, 1.0 / r, "als", "v", "als") for r in range(1, 4)],
            "user_id STRING, user_idx INT, rank INT, item_id STRING, item_idx INT, "
            "score FLOAT, source STRING, model_version STRING, strategy STRING",
        ),
        T.USER_CANDIDATES,
        "overwrite",
        commit,
        ["strategy"],
    )
    store.write(spark.createDataFrame([("b", 0)], "segment STRING, rank INT"), T.POPULAR_ITEMS, "overwrite", commit)
    # the catalogue knows items 0..2 only: item 3 came with a newer ingest than this snapshot
    store.write(
        spark.createDataFrame([(f"item-{i}", i) for i in range(3)], "item_id STRING, item_idx INT"),
        T.ITEMS,
        "overwrite",
        commit,
    )
    recs = Recommendations.open(str(tmp_path))
    assert [r.item_id for r in recs.for_user("u1", k=3)] == ["item-1", "item-2", "item-3"]
    assert [r.item_id for r in recs.for_user("u1", k=2)] == ["item-1", "item-2"]


def test_columns_as_lists_gives_what_to_pydict_gives_for_every_kind_of_column() -> None:
    from recsys_spark.serving.lookup import columns_as_lists

    source = pa.array(["als", "popular", "als", "als"]).dictionary_encode()
    table = pa.table(
        {
            "rank": pa.array([1, 2, 3, 4], pa.int32()),
            "item_idx": pa.array([7, 0, 2**31 - 1, 5], pa.int64()),
            "score": pa.array([0.1, -2.5, 1e-30, 3.0], pa.float32()),
            "share": pa.array([0.5, None, 0.25, None], pa.float32()),
            "because": pa.array([None, None, None, None], pa.int32()),
            "source": source,
            "item_id": ["i1", "i0", None, "é"],
            "flag": [True, False, True, False],
        }
    )
    two_chunks = pa.concat_tables([table.slice(0, 1), table.slice(1)])
    for t in (table, two_chunks, table.slice(1, 2), table.slice(0, 0)):
        got = columns_as_lists(t)
        assert got == t.to_pydict()
        assert [type(v) for v in got["score"]] == [float] * t.num_rows
