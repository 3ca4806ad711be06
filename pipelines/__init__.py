"""The NeuroQ training pipeline: the KFP DAG (`pipeline.py`) and its local / compile / submit runner (`run.py`)."""
