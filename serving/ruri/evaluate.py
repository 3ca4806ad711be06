"""Score a registered embedding or rerank model on Japanese sets and log the numbers to MLflow with
the model version (run metrics linked to the version's logged model, plus `eval.*` version tags);
optionally move an alias (e.g. `champion`) to the version when every gate passes.

The model is scored through its pyfunc (`mlflow.pyfunc.load_model("models:/name/version").predict`),
i.e. the same parse/prefix/batch code the server runs.

  embeddings: JSTS valid and JSICK test -> Spearman of cosine vs gold ({set}_spearman);
              JSQuAD valid questions ranked against all paragraphs -> jsquad_mrr_at_10,
              jsquad_ndcg_at_10, jsquad_recall_at_10 (query prefix for questions, document prefix
              for paragraphs).
  rerank:     each JSQuAD question against `candidates` paragraphs (its own, the other paragraphs of
              the same article, then random ones; shuffled) -> jsquad_rerank_mrr_at_10,
              jsquad_rerank_ndcg_at_10.

The data is not part of the repository: --data-dir, else $NEUROQ_DATA_DIR, else a `shared/data` folder beside
the checkout, holding eval/jsts-valid-v1.3.json.gz and eval/jsquad-valid-v1.3.json.gz (JGLUE, CC BY-SA 4.0,
Yahoo Japan Corporation) and eval/jsick-test.tsv.gz (JSICK, CC BY 4.0, Yanaka & Mineshima).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient

from serving.embeddings.model import EmbeddingModel
from serving.ruri.register import experiment_id

logger = logging.getLogger(__name__)

STS_FILES = {"jsts": "eval/jsts-valid-v1.3.json.gz", "jsick": "eval/jsick-test.tsv.gz"}
JSQUAD_FILE = "eval/jsquad-valid-v1.3.json.gz"


class EvalDataError(FileNotFoundError):
    pass


def default_data_dir() -> Path:
    return Path(os.environ.get("NEUROQ_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data")


@dataclass
class EvalConfig:
    name: str = "ruri-embed"
    alias: str | None = "challenger"  # which version to score, unless `version` is given
    version: str | None = None
    data_dir: str | None = None  # None: default_data_dir()
    sts_sets: tuple[str, ...] = ("jsts", "jsick")
    max_pairs: int | None = None  # per STS set, the first N pairs; None: all
    questions: int = 1000  # JSQuAD questions, a seeded sample
    paragraphs: int | None = None  # retrieval corpus: the first N paragraphs; None: all 1,145
    candidates: int = 20  # rerank: documents per question
    batch_size: int = 64  # texts per predict call
    seed: int = 0
    promote_to: str | None = None  # alias to move to this version when every gate passes
    gates: dict[str, float] = field(default_factory=dict)  # metric -> minimum
    experiment: str = "ruri-serving"


@dataclass(frozen=True)
class EvalResult:
    name: str
    version: str
    task: str
    metrics: dict[str, float]
    run_id: str
    promoted: bool


# --------------------------------------------------------------------------------------------
# data


def _data_file(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.is_file():
        raise EvalDataError(f"{path} not found: point NEUROQ_DATA_DIR (or --data-dir) at the shared data folder")
    return path


def load_sts(data_dir: Path, name: str, max_pairs: int | None = None) -> tuple[list[str], list[str], list[float]]:
    path = _data_file(data_dir, STS_FILES[name])
    with gzip.open(path, "rt", encoding="utf-8") as f:
        if name == "jsts":
            rows = [(r["sentence1"], r["sentence2"], float(r["label"])) for r in map(json.loads, f)]
        else:
            reader = csv.DictReader(io.StringIO(f.read()), delimiter="\t")
            rows = [(r["sentence_A_Ja"], r["sentence_B_Ja"], float(r["relatedness_score_Ja"])) for r in reader]
    rows = rows[:max_pairs] if max_pairs else rows
    first, second, gold = zip(*rows, strict=True)
    return list(first), list(second), list(gold)


@dataclass(frozen=True)
class RetrievalSet:
    questions: list[str]
    gold: list[int]  # index of each question's paragraph in `paragraphs`
    paragraphs: list[str]
    article: list[int]  # article index of each paragraph


def load_jsquad(data_dir: Path, questions: int, paragraphs: int | None = None, seed: int = 0) -> RetrievalSet:
    """The first `paragraphs` paragraphs (all by default) and a seeded sample of `questions` of their
    questions, in file order; the file's own order groups questions by article, so its first questions
    would all come from a few articles."""
    path = _data_file(data_dir, JSQUAD_FILE)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        articles = json.load(f)["data"]
    texts, article_of, qs, gold = [], [], [], []
    for a, art in enumerate(articles):
        for para in art["paragraphs"]:
            if paragraphs is not None and len(texts) >= paragraphs:
                break
            index = len(texts)
            texts.append(para["context"])
            article_of.append(a)
            for qa in para["qas"]:
                qs.append(qa["question"])
                gold.append(index)
    if questions < len(qs):
        chosen = sorted(random.Random(seed).sample(range(len(qs)), questions))
        qs, gold = [qs[i] for i in chosen], [gold[i] for i in chosen]
    return RetrievalSet(qs, gold, texts, article_of)


# --------------------------------------------------------------------------------------------
# metrics


def rank_metrics(ranks: list[int], k: int = 10) -> dict[str, float]:
    """One relevant document per query; `ranks` are 1-based ranks of that document."""
    within = [r for r in ranks if r <= k]
    n = len(ranks)
    return {
        f"mrr_at_{k}": sum(1 / r for r in within) / n,
        f"ndcg_at_{k}": sum(1 / math.log2(r + 1) for r in within) / n,
        f"recall_at_{k}": len(within) / n,
    }


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


# --------------------------------------------------------------------------------------------
# scoring through the pyfunc


def embed(model, texts: list[str], input_type: str, batch_size: int) -> np.ndarray:
    vectors = []
    for start in range(0, len(texts), batch_size):
        response = model.predict({"input": texts[start : start + batch_size], "input_type": input_type})
        vectors.extend(item["embedding"] for item in response["data"])
    return np.asarray(vectors, dtype=np.float32)


def evaluate_embeddings(model, config: EvalConfig, data_dir: Path) -> dict[str, float]:
    metrics = {}
    for name in config.sts_sets:
        first, second, gold = load_sts(data_dir, name, config.max_pairs)
        a = embed(model, first, "sts", config.batch_size)
        b = embed(model, second, "sts", config.batch_size)
        metrics[f"{name}_spearman"] = spearman((a * b).sum(axis=1), gold)
        logger.info("%s: %d pairs, Spearman %.4f", name, len(gold), metrics[f"{name}_spearman"])
    data = load_jsquad(data_dir, config.questions, config.paragraphs, config.seed)
    q = embed(model, data.questions, "query", config.batch_size)
    p = embed(model, data.paragraphs, "document", config.batch_size)
    scores = q @ p.T
    gold_scores = scores[np.arange(len(data.gold)), data.gold]
    ranks = (1 + (scores > gold_scores[:, None]).sum(axis=1)).tolist()
    metrics.update({f"jsquad_{k}": v for k, v in rank_metrics(ranks).items()})
    return metrics


def rerank_candidates(data: RetrievalSet, n: int, rng: random.Random) -> list[list[int]]:
    by_article: dict[int, list[int]] = {}
    for index, article in enumerate(data.article):
        by_article.setdefault(article, []).append(index)
    everything = range(len(data.paragraphs))
    lists = []
    for gold in data.gold:
        same = [i for i in by_article[data.article[gold]] if i != gold]
        chosen = [gold, *same[: n - 1]]
        others = [i for i in rng.sample(everything, min(len(everything), 3 * n)) if i not in chosen]
        chosen += others[: n - len(chosen)]
        rng.shuffle(chosen)  # so the gold paragraph's position tells nothing (ties keep input order)
        lists.append(chosen)
    return lists


def evaluate_rerank(model, config: EvalConfig, data_dir: Path) -> dict[str, float]:
    data = load_jsquad(data_dir, config.questions, config.paragraphs, config.seed)
    ranks = []
    for question, gold, candidates in zip(
        data.questions, data.gold, rerank_candidates(data, config.candidates, random.Random(config.seed)), strict=True
    ):
        body = {"query": question, "documents": [data.paragraphs[i] for i in candidates]}
        results = model.predict({"input": body})["results"]
        order = [candidates[r["index"]] for r in results]
        ranks.append(order.index(gold) + 1)
    return {f"jsquad_rerank_{k}": v for k, v in rank_metrics(ranks).items()}


# --------------------------------------------------------------------------------------------
# the step


def _dataset_inputs(config: EvalConfig, data_dir: Path, task: str) -> list:
    """The evaluated subsets as mlflow datasets, for the run's lineage."""
    import pandas as pd

    datasets = []
    if task == "embed":
        for name in config.sts_sets:
            first, second, gold = load_sts(data_dir, name, config.max_pairs)
            frame = pd.DataFrame({"sentence1": first, "sentence2": second, "score": gold})
            source = (data_dir / STS_FILES[name]).resolve().as_uri()
            datasets.append(mlflow.data.from_pandas(frame, source=source, name=name, targets="score"))
    data = load_jsquad(data_dir, config.questions, config.paragraphs, config.seed)
    frame = pd.DataFrame({"question": data.questions, "paragraph": [data.paragraphs[i] for i in data.gold]})
    source = (data_dir / JSQUAD_FILE).resolve().as_uri()
    datasets.append(mlflow.data.from_pandas(frame, source=source, name="jsquad", targets="paragraph"))
    return datasets


def evaluate(config: EvalConfig) -> EvalResult:
    """Score one registered version, log the metrics with it, and promote it if the gates pass."""
    client = MlflowClient()
    if config.version is not None:
        version = client.get_model_version(config.name, config.version)
    elif config.alias is not None:
        version = client.get_model_version_by_alias(config.name, config.alias)
    else:
        raise ValueError("give a version or an alias to evaluate")
    data_dir = Path(config.data_dir) if config.data_dir else default_data_dir()
    model = mlflow.pyfunc.load_model(f"models:/{config.name}/{version.version}")
    task = "embed" if isinstance(model.unwrap_python_model(), EmbeddingModel) else "rerank"
    logger.info("evaluating %s version %s (%s) on %s", config.name, version.version, task, data_dir)
    metrics = (evaluate_embeddings if task == "embed" else evaluate_rerank)(model, config, data_dir)

    with mlflow.start_run(experiment_id=experiment_id(config.experiment),
                          run_name=f"eval-{config.name}-v{version.version}") as run:
        params = {k: v for k, v in asdict(config).items() if v is not None and k != "gates"}
        mlflow.log_params({**params, "model_version": version.version, "task": task, "data_dir": str(data_dir)})
        for dataset in _dataset_inputs(config, data_dir, task):
            mlflow.log_input(dataset, context="evaluation")
        # the version's logged model (ModelVersion.model_id is not filled in by every store)
        mlflow.log_metrics(metrics, model_id=model.metadata.model_id)
    for key, value in metrics.items():
        client.set_model_version_tag(config.name, version.version, f"eval.{key}", f"{value:.6f}")
    client.set_model_version_tag(config.name, version.version, "eval.run_id", run.info.run_id)

    failed = {k: (metrics.get(k), low) for k, low in config.gates.items() if metrics.get(k, -math.inf) < low}
    promoted = False
    if config.promote_to and not failed:
        client.set_registered_model_alias(config.name, config.promote_to, version.version)
        promoted = True
    elif config.promote_to:
        logger.warning(
            "not promoting %s v%s to @%s: gates failed %s", config.name, version.version, config.promote_to, failed
        )
    return EvalResult(config.name, str(version.version), task, metrics, run.info.run_id, promoted)
