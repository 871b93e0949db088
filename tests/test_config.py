from __future__ import annotations

from pathlib import Path

import pytest

from recsys_spark.config.loader import load_config
from recsys_spark.config.schema import SOURCE_PRESETS, Config, IngestConfig, SourceConfig
from recsys_spark.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_shipped_configs_are_valid() -> None:
    local = load_config(REPO / "conf" / "local.toml")
    cluster = load_config(REPO / "conf" / "cluster.toml")
    assert local.storage.root == "data/warehouse"
    assert cluster.ingest.source.preset == "custom"
    assert cluster.ingest.source.event_id_col == "id"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[ingest]\nmax_reject_fractoin = 0.1\n")
    with pytest.raises(ConfigError, match=r"ingest\.max_reject_fractoin: unknown key") as err:
        load_config(f)
    assert str(f) in str(err.value)


def test_unknown_section_is_named() -> None:
    with pytest.raises(ConfigError, match=r"sparkk: unknown key"):
        load_config(None, ["sparkk.master=local"])


def test_wrong_type_is_named_not_cast(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[spark]\nshuffle_partitions = "8"\n')
    with pytest.raises(ConfigError, match=r"spark\.shuffle_partitions: Input should be a valid integer"):
        load_config(f)


def test_out_of_range_and_bad_literal_values() -> None:
    with pytest.raises(ConfigError, match=r"ingest\.max_reject_fraction"):
        load_config(None, ["ingest.max_reject_fraction=1.5"])
    with pytest.raises(ConfigError, match=r"ingest\.source\.format"):
        load_config(None, ["ingest.source.format=xml"])
    with pytest.raises(ConfigError, match=r"ingest\.event_weights\.view must be a finite number"):
        load_config(None, ["ingest.event_weights.view=-1.0"])
    with pytest.raises(ConfigError, match=r"generate\.start_date"):
        load_config(None, ["generate.start_date=yesterday"])
    with pytest.raises(ConfigError, match=r"evaluation\.time_cutoff 'last tuesday' is not an ISO-8601 instant"):
        load_config(None, ["evaluation.time_cutoff=last tuesday"])
    cutoff = load_config(None, ['evaluation.time_cutoff="2026-10-01T00:00:00Z"']).evaluation.time_cutoff
    assert cutoff == "2026-10-01T00:00:00Z"


def test_bad_paths_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"storage\.root must not contain glob characters"):
        load_config(None, ["storage.root=data/ware*house"])
    with pytest.raises(ConfigError, match=r"storage\.root must not be empty"):
        load_config(None, ['storage.root=""'])
    with pytest.raises(ConfigError, match=r"config file not found"):
        load_config("conf/nope.toml")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "broken.toml"
    f.write_text("[spark\nmaster = 1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml is not valid TOML"):
        load_config(f)


def test_overrides_are_typed_toml_literals() -> None:
    cfg = load_config(
        None,
        ["generate.num_events=1000", "spark.ui_enabled=false", "spark.master=local[3]", "ingest.half_life_days=7.5"],
    )
    assert cfg.generate.num_events == 1000
    assert cfg.spark.ui_enabled is False
    assert cfg.spark.master == "local[3]"
    assert cfg.ingest.half_life_days == 7.5


def test_override_of_one_map_key_keeps_the_others() -> None:
    cfg = load_config(None, ["ingest.event_weights.purchase=10"])
    assert cfg.ingest.event_weights["purchase"] == 10.0
    assert cfg.ingest.event_weights["view"] == 1.0


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        load_config(None, ["ingest.source.path"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["spark.master.x=1"])


@pytest.mark.parametrize("preset", sorted(SOURCE_PRESETS))
def test_presets_fill_source_and_explicit_keys_win(preset: str) -> None:
    cfg = load_config(None, [f"ingest.source.preset={preset}", "ingest.source.encoding=ISO-8859-1"])
    src = cfg.ingest.source
    for key, value in SOURCE_PRESETS[preset].items():
        assert getattr(src, key) == value
    assert src.encoding == "ISO-8859-1"


def test_source_consistency_checks() -> None:
    with pytest.raises(ConfigError, match="field_names is required"):
        load_config(
            None,
            [
                "ingest.source.preset=custom",
                "ingest.source.format=tsv",
                "ingest.source.header=false",
                "ingest.source.timestamp_col=ts",
            ],
        )
    with pytest.raises(ConfigError, match="value_col \\(the rating\\) is required"):
        load_config(
            None, ["ingest.source.preset=custom", "ingest.source.feedback=explicit", "ingest.source.timestamp_col=ts"]
        )
    with pytest.raises(ConfigError, match="timestamp_col is required"):
        load_config(None, ["ingest.source.preset=custom"])


def test_config_hash_is_stable_and_sensitive() -> None:
    a, b = load_config(None, []), load_config(None, [])
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != load_config(None, ["generate.seed=7"]).config_hash()


def test_every_field_is_documented() -> None:
    def walk(model: type) -> list[str]:
        missing = []
        for name, f in model.model_fields.items():
            if not f.description:
                missing.append(f"{model.__name__}.{name}")
            ann = f.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                missing += walk(ann)
        return missing

    assert walk(Config) == []


def test_toml_datetimes_are_taken_as_iso_strings(tmp_path: Path) -> None:
    # an unquoted TOML date-time is a datetime, not a string; the options mean the same instant
    cfg = load_config(
        None,
        [
            "ingest.min_event_time=1900-01-01T00:00:00Z",
            "generate.start_date=2026-09-01",
            "evaluation.time_cutoff=2026-10-01T12:00:00+02:00",
        ],
    )
    assert cfg.ingest.min_event_time == "1900-01-01T00:00:00Z"
    assert cfg.generate.start_date == "2026-09-01"
    assert cfg.evaluation.time_cutoff == "2026-10-01T12:00:00+02:00"
    f = tmp_path / "c.toml"
    f.write_text("[ingest]\nmin_event_time = 1950-06-01T00:00:00\n")
    assert load_config(f).ingest.min_event_time == "1950-06-01T00:00:00"


@pytest.mark.parametrize(
    ("key", "value", "relation"),
    [
        ("generate.output", "{root}/..", "contains"),
        ("generate.output", "{root}/x/../", "is"),
        ("evaluation.output_dir", "{root}/items/../reports", "is inside"),
        ("spark.checkpoint_dir", "{root}/../warehouse/ckpt", "is inside"),
        ("ingest.source.path", "{root}/../..", "contains"),
        ("evaluation.given_test", "{root}/{{fold}}.test", "is inside"),
    ],
)
def test_paths_must_stay_out_of_the_table_root(key: str, value: str, relation: str, tmp_path: Path) -> None:
    root = tmp_path / "warehouse"
    path = value.format(root=root)
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"storage.root={root}", f"{key}={path}"])
    assert (
        f"{key} '{path}' {relation} the table root (storage.root = '{root}', that is {root} once '..' is "
        "resolved)" in str(err.value)
    )


def test_uri_paths_are_compared_within_one_bucket() -> None:
    with pytest.raises(ConfigError, match=r"generate.output 's3://b/w/x/\.\./raw' is inside the table root"):
        load_config(None, ["storage.root=s3a://b/w", "generate.output=s3://b/w/x/../raw"])
    cfg = load_config(
        None, ["storage.root=s3a://b/w", "generate.output=s3://other/w/raw", "spark.checkpoint_dir=hdfs:///b/w"]
    )
    assert cfg.generate.output == "s3://other/w/raw"


def test_folders_must_not_be_files(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    for key in ("storage.root", "spark.checkpoint_dir", "evaluation.output_dir"):
        with pytest.raises(ConfigError, match=rf"{key}: {key} '.*file' must be a directory, but it is a file"):
            load_config(None, [f"{key}={f}"])
    with pytest.raises(
        ConfigError, match=r"storage.root '.*/file/wh' must be a directory, but it is a file \(.*/file is a file\)"
    ):
        load_config(None, [f"storage.root={f}/wh"])


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a TOML file"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("encoding", "ok"),
    [
        ("UTF-8", True),
        ("utf8", True),
        ("latin1", True),
        ("ISO-8859-1", True),
        ("ascii", True),
        ("UTF-16", False),
        ("cp1252", False),
        ("klingon", False),
    ],
)
def test_encodings_ingest_can_decode(encoding: str, ok: bool) -> None:
    overrides = [f"ingest.source.encoding={encoding}"]
    if ok:
        assert load_config(None, overrides).ingest.source.encoding == encoding
    else:
        with pytest.raises(ConfigError, match=rf"ingest.source.encoding '{encoding}' is not supported"):
            load_config(None, overrides)


def test_delimiter_and_bounds() -> None:
    with pytest.raises(ConfigError, match=r"for a tab write"):
        load_config(None, ["ingest.source.delimiter=\\t"])
    assert load_config(None, ['ingest.source.delimiter="\\t"']).ingest.source.separator == "\t"
    with pytest.raises(ConfigError, match=r"cannot separate fields"):
        load_config(None, ["ingest.source.delimiter='\"'"])
    with pytest.raises(ConfigError, match=r"ingest.max_future_days: Input should be less than or equal to 1000000"):
        load_config(None, ["ingest.max_future_days=1e12"])  # would overflow the date arithmetic


def test_set_reaches_dotted_spark_properties_and_writes_scalars_as_spark_spells_them() -> None:
    cfg = load_config(
        None,
        [
            "spark.conf.spark.eventLog.enabled=true",
            "spark.conf.spark.sql.shuffle.partitions=7",
            "spark.conf.spark.memory.fraction=0.5",
            "spark.conf.spark.eventLog.dir=file:///tmp/ev",
        ],
    )
    assert cfg.spark.conf == {
        "spark.eventLog.enabled": "true",
        "spark.sql.shuffle.partitions": "7",
        "spark.memory.fraction": "0.5",
        "spark.eventLog.dir": "file:///tmp/ev",
    }
    with pytest.raises(ConfigError, match=r"spark\.conf\.x"):
        load_config(None, ["spark.conf.x=[1, 2]"])


def test_min_rating_above_max_rating_is_an_error_naming_both_keys() -> None:
    with pytest.raises(ConfigError, match=r"ingest\.min_rating = 4 is above ingest\.max_rating = 2"):
        load_config(None, ["ingest.min_rating=4", "ingest.max_rating=2"])
    with pytest.raises(
        ConfigError,
        match=r"ingest\.min_rating = 1 is above ingest\.max_rating = 0\.5: .*the "
        r"movielens-100k preset sets 1 \.\. 5",
    ):
        load_config(None, ["ingest.source.preset=movielens-100k", "ingest.max_rating=0.5"])
    assert load_config(None, ["ingest.min_rating=3", "ingest.max_rating=3"]).ingest.max_rating == 3.0


@pytest.mark.parametrize(
    ("preset", "scale"),
    [
        ("movielens-100k", (1.0, 5.0)),
        ("movielens-csv", (0.5, 5.0)),
        ("amazon-5core", (1.0, 5.0)),
        ("synthetic", (None, None)),
        ("lastfm-plays", (None, None)),
        ("custom", (None, None)),
    ],
)
def test_presets_of_rated_data_set_their_rating_scale_unless_the_user_sets_it(preset: str, scale: tuple) -> None:
    base = [f"ingest.source.preset={preset}"] + (["ingest.source.timestamp_col=ts"] if preset == "custom" else [])
    ingest = load_config(None, base).ingest
    assert (ingest.min_rating, ingest.max_rating) == scale
    own = load_config(None, [*base, "ingest.max_rating=10"]).ingest
    assert (own.min_rating, own.max_rating) == (scale[0], 10.0)
    assert load_config(None, [*base, "ingest.min_rating=0"]).ingest.min_rating == 0.0
    # the same when the config is built in code around a SourceConfig
    built = IngestConfig(source=SourceConfig(preset=preset, **({"timestamp_col": "ts"} if preset == "custom" else {})))
    assert (built.min_rating, built.max_rating) == scale


def test_ingest_bounds_null_tokens_and_weights_are_checked() -> None:
    with pytest.raises(
        ConfigError,
        match=r"ingest\.max_value bounds implicit values; ratings .* are bounded by "
        r"ingest\.min_rating / ingest\.max_rating",
    ):
        load_config(None, ["ingest.source.preset=amazon-5core", "ingest.max_value=100"])
    with pytest.raises(ConfigError, match=r"ingest\.max_value: Input should be greater than 0"):
        load_config(None, ["ingest.max_value=0"])
    with pytest.raises(ConfigError, match=r"ingest\.max_rating must be a finite number, got nan"):
        load_config(None, ["ingest.max_rating=nan"])
    with pytest.raises(ConfigError, match=r"ingest\.null_tokens: token ' NULL' is blank or padded"):
        load_config(None, ['ingest.null_tokens=[" NULL"]'])
    with pytest.raises(ConfigError, match=r"ingest\.event_weights\.view = 1e\+39 exceeds float32's largest value"):
        load_config(None, ["ingest.event_weights.view=1e39"])
    with pytest.raises(ConfigError, match=r"ingest\.id_normalization"):
        load_config(None, ["ingest.id_normalization=NFD"])
    cfg = load_config(None, ["ingest.max_value=1e6", "ingest.null_tokens=[]", "ingest.id_normalization=none"]).ingest
    assert (cfg.max_value, cfg.null_tokens, cfg.id_normalization) == (1e6, [], "none")
    assert load_config(None, []).ingest.null_tokens == ["NULL", "null", "Null", "\\N", "None"]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "conf").glob("*.toml")))
def test_every_shipped_config_loads_and_says_where_its_model_settings_come_from(name: str) -> None:
    text = (REPO / "conf" / name).read_text()
    cfg = load_config(REPO / "conf" / name)
    assert cfg.candidates.strategies
    if name not in ("cluster.toml", "local-cluster.toml"):  # the cluster presets take local.toml's models
        assert "Where these settings come from" in text or "Where the settings come from" in text, name
