"""The ingest job end to end on small files: quarantine, idempotency, stable ids, formats."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_spark import tables as T
from recsys_spark.config.schema import Config
from recsys_spark.errors import InputError, RejectThresholdError
from recsys_spark.storage.store import TableStore
from tests.conftest import table_versions

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from tests.conftest import IngestRun

HEADER = "event_id,user_id,item_id,event_type,timestamp,value"
GOOD_LINES = [
    "e1,alice,apple,view,2026-09-01T10:00:00Z,1",
    "e2,alice,apple,click,2026-09-01T10:01:00Z,1",
    "e3,bob,apple,view,2026-09-02T10:00:00Z,1",
    "e4,bob,pear,purchase,2026-09-02T11:00:00Z,2",
    "e5,carol,plum,view,2026-09-03T09:00:00Z,1",
]
# (line, reason): each planted bad row and why it must be quarantined
BAD_LINES = [
    ("e6,,apple,view,2026-09-01T10:00:00Z,1", "missing_user_id"),
    ("e7,dave,apple,hover,2026-09-01T10:00:00Z,1", "unknown_event_type"),
    ("e8,dave,apple,view,sometime,1", "unparsable_timestamp"),
    ("e9,dave,apple,view,2026-09-01T10:00:00Z,-5", "negative_value"),
    ("e10,dave,apple,view,2026-09-01T10:00:00Z", "malformed_row"),
    ("e11,dave,apple,view,2026-09-01T10:00:00Z,NaN", "non_finite_value"),
    ("e12,dave,apple,view,1970-01-01T00:00:00Z,1", "timestamp_out_of_range"),
]


def _write(path: Path, lines: list[str], header: str | None = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(([header] if header else []) + lines) + "\n")
    return path


def test_planted_bad_rows_are_exactly_quarantined(
    spark: SparkSession, ingest: IngestRun, cfg: Config, store: TableStore, tmp_path: Path
) -> None:
    lines = GOOD_LINES[:3] + [b for b, _ in BAD_LINES] + GOOD_LINES[3:] + [GOOD_LINES[0]]  # + a duplicate
    f = _write(tmp_path / "in" / "events.csv", lines)
    report = ingest(cfg, f"ingest.source.path={f}", "ingest.max_reject_fraction=0.9")
    assert report.rows_read == len(lines)
    assert report.rows_rejected == len(BAD_LINES)
    assert report.rows_duplicate == 1
    assert report.events_added == len(GOOD_LINES)
    rejected = {
        (r.line_number, r.raw_line, r.reason, r.source_file) for r in store.read(T.REJECTED_INTERACTIONS).collect()
    }
    expected = {(5 + i, line, reason, str(f)) for i, (line, reason) in enumerate(BAD_LINES)}  # after header + 3
    assert rejected == expected
    assert report.reject_reasons == {reason: 1 for _, reason in BAD_LINES}


def test_tables_and_ids(spark: SparkSession, ingest: IngestRun, cfg: Config, store: TableStore, tmp_path: Path) -> None:
    ingest(cfg, f"ingest.source.path={_write(tmp_path / 'a.csv', GOOD_LINES)}")
    users = {r.user_id: r.user_idx for r in store.read(T.USERS).collect()}
    items = {r.item_id: r.item_idx for r in store.read(T.ITEMS).collect()}
    assert sorted(users.values()) == [0, 1, 2] and sorted(items.values()) == [0, 1, 2]
    inter = store.read(T.INTERACTIONS)
    assert inter.count() == 5
    assert {str(r.event_date) for r in inter.select("event_date").distinct().collect()} == {
        "2026-09-01",
        "2026-09-02",
        "2026-09-03",
    }
    m = {(r.user_idx, r.item_idx): r for r in store.read(T.INTERACTION_MATRIX).collect()}
    alice_apple = m[(users["alice"], items["apple"])]
    assert alice_apple.confidence == 1.0 + 2.0 and alice_apple.event_count == 2
    assert m[(users["bob"], items["pear"])].confidence == 5.0 * 2
    assert store.schema(T.INTERACTION_MATRIX)["user_idx"].dataType.simpleString() == "int"


def test_reingest_changes_nothing_and_new_ids_get_new_numbers(
    spark: SparkSession, ingest: IngestRun, cfg: Config, store: TableStore, tmp_path: Path
) -> None:
    first = _write(tmp_path / "in" / "day1.csv", GOOD_LINES)
    ingest(cfg, f"ingest.source.path={tmp_path / 'in'}")
    before = table_versions(store)
    users_before = {r.user_id: r.user_idx for r in store.read(T.USERS).collect()}

    again = ingest(cfg, f"ingest.source.path={tmp_path / 'in'}")
    assert again.files_skipped == 1 and not again.writes
    assert table_versions(store) == before

    # The same events under another name (a copy) add nothing either: events are keyed.
    _write(tmp_path / "in" / "copy-of-day1.csv", GOOD_LINES)
    copy = ingest(cfg, f"ingest.source.path={tmp_path / 'in'}")
    # they are reported as already stored, not as duplicates within the batch
    assert copy.events_added == 0 and copy.rows_already_stored == len(GOOD_LINES) and copy.rows_duplicate == 0
    assert f"already stored: {len(GOOD_LINES)}" in copy.render() and "duplicates dropped: 0" in copy.render()
    assert store.read(T.INTERACTIONS).count() == len(GOOD_LINES)
    assert store.version(T.INTERACTIONS) == before[T.INTERACTIONS]

    # A new day: new ids are numbered after the old ones, old ids keep theirs.
    _write(
        tmp_path / "in" / "day2.csv",
        ["e20,zed,apple,view,2026-09-04T10:00:00Z,1", "e21,alice,kiwi,view,2026-09-04T10:00:00Z,1"],
    )
    day2 = ingest(cfg, f"ingest.source.path={tmp_path / 'in'}")
    assert (day2.events_added, day2.new_users, day2.new_items) == (2, 1, 1)
    users_after = {r.user_id: r.user_idx for r in store.read(T.USERS).collect()}
    assert {u: users_after[u] for u in users_before} == users_before
    assert users_after["zed"] == 3
    assert {r.item_id: r.item_idx for r in store.read(T.ITEMS).collect()}["kiwi"] == 3
    assert store.read(T.INTERACTION_MATRIX).count() == 4 + 2
    assert first.exists()


def test_modified_file_adds_only_its_new_events(
    spark: SparkSession, ingest: IngestRun, cfg: Config, store: TableStore, tmp_path: Path
) -> None:
    f = _write(tmp_path / "log.csv", [*GOOD_LINES[:3], BAD_LINES[0][0]])
    ingest(cfg, f"ingest.source.path={f}", "ingest.max_reject_fraction=0.5")
    _write(f, [*GOOD_LINES, BAD_LINES[0][0]])
    os.utime(f, (1, 1_900_000_000))
    report = ingest(cfg, f"ingest.source.path={f}", "ingest.max_reject_fraction=0.5")
    assert report.events_added == 2
    assert store.read(T.INTERACTIONS).count() == 5
    # the bad row moved to another line: it is recorded again for that line, not duplicated otherwise
    assert store.read(T.REJECTED_INTERACTIONS).count() == 2


def test_too_many_rejects_fail_and_commit_nothing(
    spark: SparkSession, ingest: IngestRun, cfg: Config, store: TableStore, tmp_path: Path
) -> None:
    f = _write(tmp_path / "bad.csv", GOOD_LINES[:2] + [b for b, _ in BAD_LINES])
    with pytest.raises(RejectThresholdError) as err:
        ingest(cfg, f"ingest.source.path={f}")
    msg = str(err.value)
    assert "7 of 9 rows (77.8%) were rejected" in msg and "nothing was committed" in msg
    assert f"{f}:4: missing_user_id" in msg  # header, two good lines, then the first bad one
    assert all(v is None for v in table_versions(store).values())


def test_missing_input_and_missing_columns(spark: SparkSession, ingest: IngestRun, cfg: Config, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"ingest.source.path .*nope.* does not exist"):
        ingest(cfg, f"ingest.source.path={tmp_path / 'nope'}")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match="is a directory with no input files"):
        ingest(cfg, f"ingest.source.path={tmp_path / 'empty_dir'}")
    f = _write(tmp_path / "wrong.csv", ["1,2,3"], header="a,b,c")
    with pytest.raises(InputError, match=r"has no column for user_id -> 'user_id'"):
        ingest(cfg, f"ingest.source.path={f}")


def test_tsv_without_header_crlf_bom_and_latin1(
    spark: SparkSession, ingest: IngestRun, cfg: Config, store: TableStore, tmp_path: Path
) -> None:
    f = tmp_path / "u.data"
    f.write_bytes(b"\xef\xbb\xbf196\t242\t3\t881250949\r\n186\t302\t3\t891717742\r\n\r\n22\t377\t1\t878887116\r\n")
    report = ingest(cfg, f"ingest.source.path={f}", "ingest.source.preset=movielens-100k")
    assert (report.rows_read, report.rows_rejected, report.events_added) == (3, 0, 3)
    assert sorted(r.user_id for r in store.read(T.USERS).collect()) == ["186", "196", "22"]
    ratings = {r.rating for r in store.read(T.INTERACTION_MATRIX).collect()}
    assert ratings == {3.0, 1.0}

    latin = tmp_path / "latin.csv"
    latin.write_bytes("user_id,item_id,event_type,timestamp,value\nzoë,café,view,2026-09-01,1\n".encode("latin-1"))
    c = cfg.with_overrides([f"storage.root={tmp_path / 'wh2'}"])
    ingest(
        c,
        f"ingest.source.path={latin}",
        "ingest.source.preset=custom",
        "ingest.source.encoding=ISO-8859-1",
        "ingest.source.event_type_col=event_type",
        "ingest.source.value_col=value",
        "ingest.source.timestamp_col=timestamp",
    )
    assert [r.user_id for r in TableStore(spark, c.storage).read(T.USERS).collect()] == ["zoë"]


def test_invalid_utf8_is_quarantined(
    spark: SparkSession, ingest: IngestRun, cfg: Config, store: TableStore, tmp_path: Path
) -> None:
    f = tmp_path / "mixed.csv"
    f.write_bytes(
        (HEADER + "\n" + "\n".join(GOOD_LINES) + "\n").encode() + b"e9,caf\xe9,apple,view,2026-09-01T10:00:00Z,1\n"
    )
    report = ingest(cfg, f"ingest.source.path={f}", "ingest.max_reject_fraction=0.5")
    assert report.reject_reasons == {"invalid_encoding": 1}
    assert store.read(T.REJECTED_INTERACTIONS).first().line_number == 7


def test_json_lines_gzipped(
    spark: SparkSession, ingest: IngestRun, cfg: Config, store: TableStore, tmp_path: Path
) -> None:
    rows = [
        {"reviewerID": "A1", "asin": "B1", "overall": 5.0, "unixReviewTime": 1393545600},
        {"reviewerID": "A2", "asin": "B1", "overall": 3.0, "unixReviewTime": 1393545600},
        {"reviewerID": "A2", "asin": ["B2"], "overall": 3.0, "unixReviewTime": 1393545600},
    ]
    f = tmp_path / "reviews.json.gz"
    with gzip.open(f, "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    report = ingest(
        cfg, f"ingest.source.path={f}", "ingest.source.preset=amazon-5core", "ingest.max_reject_fraction=0.9"
    )
    assert (report.events_added, report.rows_rejected) == (2, 2)
    assert report.reject_reasons == {"invalid_id": 1, "malformed_row": 1}
    assert {r.line_number for r in store.read(T.REJECTED_INTERACTIONS).collect()} == {3, 4}


def test_parquet_source(spark: SparkSession, ingest: IngestRun, cfg: Config, store: TableStore, tmp_path: Path) -> None:
    (tmp_path / "pq").mkdir()
    table = pa.table(
        {
            "user": [1, 2, 2, 3],
            "item": ["x", "y", "x", None],
            "ts": pa.array(
                [1_788_000_000_000, 1_788_000_100_000, 1_788_000_200_000, 1_788_000_300_000], pa.timestamp("ms", "UTC")
            ),
            "kind": ["view", "click", "view", "view"],
        }
    )
    pq.write_table(table, tmp_path / "pq" / "part-0.parquet")
    report = ingest(
        cfg,
        f"ingest.source.path={tmp_path / 'pq'}",
        "ingest.source.preset=custom",
        "ingest.source.format=parquet",
        "ingest.source.user_col=user",
        "ingest.source.item_col=item",
        "ingest.source.timestamp_col=ts",
        "ingest.source.event_type_col=kind",
        "ingest.max_reject_fraction=0.5",
    )
    assert (report.events_added, report.rows_rejected) == (3, 1)
    bad = store.read(T.REJECTED_INTERACTIONS).first()
    assert bad.line_number == 4 and bad.reason == "missing_item_id" and '"user":3' in bad.raw_line
    times = sorted(r.event_time for r in store.read(T.INTERACTIONS).collect())
    assert times[0].isoformat().startswith("2026-08-29T")


def test_not_a_parquet_file_names_the_file(spark: SparkSession, ingest: IngestRun, cfg: Config, tmp_path: Path) -> None:
    f = tmp_path / "fake.parquet"
    f.write_text("user,item\n1,2\n")
    with pytest.raises(InputError, match=r"fake.parquet is not a readable Parquet file"):
        ingest(
            cfg,
            f"ingest.source.path={f}",
            "ingest.source.preset=custom",
            "ingest.source.format=parquet",
            "ingest.source.timestamp_format=none",
        )


def test_oversize_line_is_quarantined_not_parsed(
    spark: SparkSession, ingest: IngestRun, cfg: Config, store: TableStore, tmp_path: Path
) -> None:
    huge = "e9,alice," + "x" * 200_000 + ",view,2026-09-01T10:00:00Z,1"
    f = _write(tmp_path / "big.csv", [*GOOD_LINES, huge])
    report = ingest(cfg, f"ingest.source.path={f}", "ingest.max_reject_fraction=0.5")
    assert report.reject_reasons == {"oversize_line": 1}
    raw = store.read(T.REJECTED_INTERACTIONS).first().raw_line
    assert raw.endswith("...[truncated]") and len(raw) < 5000


def test_lastfm_preset_without_timestamps(
    spark: SparkSession, ingest: IngestRun, cfg: Config, store: TableStore, tmp_path: Path
) -> None:
    f = tmp_path / "user_artists.dat"
    f.write_bytes(b"userID\tartistID\tweight\r\n2\t51\t13883\r\n2\t52\t11690\r\n3\t51\t0\r\n")
    report = ingest(cfg, f"ingest.source.path={f}", "ingest.source.preset=lastfm-plays", "ingest.value_transform=log1p")
    assert report.events_added == 3
    assert store.read(T.INTERACTIONS).where("event_date IS NULL").count() == 3
    conf = sorted(r.confidence for r in store.read(T.INTERACTION_MATRIX).collect())
    assert conf[0] == 0.0 and conf[-1] == pytest.approx(9.538492377)  # log1p(13883)
    again = ingest(cfg, f"ingest.source.path={f}", "ingest.source.preset=lastfm-plays", "ingest.value_transform=log1p")
    assert again.files_skipped == 1
