"""What each pipeline step does, as plain functions over folders: the KFP components and the MLproject entry
points are thin shells around these, so a step is testable (and runnable) without KFP.

    base.py        where a step logs (RunRef), opening its MLflow run, dataset manifests
    tracking.py    the MLflow run structure (parent and child runs), the retry policy, the training metrics logger
    data.py        ingest per source family, then merge, deduplicate and split
    training.py    the tokenizer, then NeuroQ
    torchrun.py    NeuroQ on several GPUs of one pod
    evaluation.py  score, then register and promote
"""
