"""Every strategy and baseline of a config, scored on the validation carve-out instead of the test.

    python docs/examples/validation_scores.py conf/amazon-5core.toml [--set KEY=VALUE ...]

Which strategies a dataset should serve is a model choice, so it is made on validation data as
the hyperparameters are: the config's evaluation split gives the training part (its first split),
the carve-out the searches use (``tuning.validation_fraction`` of each user's items, seed
``tuning.seed``) is held out of it, and the config's models, with their settings as written
(searches off), are fitted on the rest and scored on the carve-out. The test part is never read.
"""

from __future__ import annotations

import argparse
import sys

from recsys_spark import tables as T
from recsys_spark.config import load_config
from recsys_spark.evaluation import evaluate_split, headline_values
from recsys_spark.pipeline import _splits, run_ingest
from recsys_spark.run import RunContext
from recsys_spark.session import build_session
from recsys_spark.splits import random_split
from recsys_spark.storage import TableStore


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, [*args.set, "als.tune=false", "similarity.tune=false", "candidates.tune=false"])
    spark = build_session(cfg.spark, cfg.storage, app_name="validation scores")
    try:
        run_ingest(spark, cfg, RunContext.new("validation-scores", cfg))
        store = TableStore(spark, cfg.storage)
        inputs = {t: store.version(t) for t in (T.INTERACTION_MATRIX, T.USERS, T.ITEMS)}
        matrix = store.read(T.INTERACTION_MATRIX, version=inputs[T.INTERACTION_MATRIX])
        n_items = store.read(T.ITEMS).count()
        graded = matrix.where("rating IS NOT NULL").limit(1).count() > 0
        split, _, train, _ = _splits(spark, cfg, store, matrix, inputs)[0]
        fit, valid = random_split(train, cfg.tuning.validation_fraction, cfg.tuning.seed)
        scored = evaluate_split(f"{split}/validation", fit, valid, cfg, n_items=n_items, graded=graded)
        metric, k = cfg.evaluation.headline_metric, cfg.evaluation.headline_k
        values = headline_values(scored.results, metric, k)
        print(f"{args.config}, split {split}: {metric}@{k} on the validation carve-out")
        for model, value in sorted(values.items(), key=lambda kv: -kv[1]):
            print(f"  {model:12s} {value:.4f}")
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
