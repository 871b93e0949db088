"""The spark-submit entry points in jobs/, run exactly as the README documents (local master)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from recsys_spark import tables as T
from recsys_spark.storage.store import describe_table, table_history
from tests.conftest import subprocess_env

REPO = Path(__file__).resolve().parent.parent


def _submit(job: str, zip_path: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    submit = Path(sys.executable).parent / "spark-submit"
    env = subprocess_env(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    cmd = [
        str(submit),
        "--master",
        "local[2]",
        "--driver-memory",
        "1g",
        "--conf",
        "spark.ui.enabled=false",
        "--py-files",
        str(zip_path),
        str(REPO / "jobs" / job),
        "--config",
        str(REPO / "conf" / "local.toml"),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_pipeline_jobs_under_spark_submit(tmp_path: Path) -> None:
    # as `make dist` builds it, without the benchmarks and developer tools: the jobs need neither
    zip_path = tmp_path / "recsys_spark.zip"
    with zipfile.ZipFile(zip_path, "w") as z:
        for p in sorted((REPO / "recsys_spark").rglob("*.py")):
            relative = p.relative_to(REPO)
            if relative.parts[1] not in ("bench", "dev"):
                z.write(p, relative)
    raw = tmp_path / "u.data"
    raw.write_text(
        "".join(
            f"{u}\t{i}\t{1 + (u + i) % 5}\t88000{u:04d}\n" for u in range(1, 41) for i in range(1, 31) if (u + i) % 3
        )
    )
    root = tmp_path / "warehouse"
    common = [
        "--set",
        f"storage.root={root}",
        "--set",
        f"spark.checkpoint_dir={tmp_path / 'ckpt'}",
        "--set",
        "spark.shuffle_partitions=2",
    ]
    steps = [
        ("ingest.py", ["--set", f"ingest.source.path={raw}", "--set", "ingest.source.preset=movielens-100k"]),
        ("train_als.py", ["--set", "als.rank=4", "--set", "als.max_iter=3"]),
        ("item_similarity.py", ["--set", "similarity.cosine.min_cooccurrence=1"]),
        ("item_similarity.py", ["--set", "similarity.method=als", "--set", "similarity.top_n=5"]),
    ]
    for job, extra in steps:
        proc = _submit(job, zip_path, [*common, *extra], tmp_path)
        assert proc.returncode == 0, f"{job} failed:\n{proc.stderr[-3000:]}"
    assert describe_table(str(root), T.USERS).rows == 40
    assert describe_table(str(root), T.ITEM_FACTORS).rows == 30
    assert describe_table(str(root), T.USER_FACTORS).version == 0
    jobs = [e.metadata.get("job") for e in table_history(str(root), T.ITEM_NEIGHBORS)]
    assert jobs == ["item-similarity", "item-similarity"]
    assert describe_table(str(root), T.ITEM_NEIGHBORS).rows >= 30 * 5  # als partition + cosine partition

    bad = _submit("train_als.py", zip_path, [*common, "--set", "als.rank=0"], tmp_path)
    said = bad.stdout + bad.stderr  # spark-submit's PythonRunner merges the driver's stderr into stdout
    assert bad.returncode == 2 and "als.rank" in said and "Traceback" not in said
