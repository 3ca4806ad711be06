"""The Python environment of a model's image, without building it: a folder that holds only the distributions
the image installs (the model's requirements.txt and their dependencies, taken from this environment) for
`python -S` to import from, beside the standard library and the model's own code.

    site = image_site(model_dir, tmp / "site")
    PYTHONPATH=site python -S tests/deploy/image_env.py MODEL_DIR '{"input": ["..."]}'   # the answer as JSON
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import sys
from pathlib import Path

# What the image has besides requirements.txt: pip / setuptools / wheel (python_env.yaml's build dependencies,
# also in the python:*-slim base) and gunicorn, which `_install_pyfunc_deps` adds for the scoring server.
IMAGE_EXTRAS = ("pip", "setuptools", "wheel", "gunicorn")


def requirement_closure(requirements: list[str]) -> set[str]:
    """Canonical names of the distributions pip would install for `requirements`, read from installed metadata."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [Requirement(line) for line in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            continue  # not installed here: nothing of it could be imported anyway
        extras = set(requirement.extras) | {""}
        for line in dist.requires or []:
            dependency = Requirement(line)
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras):
                todo.append(dependency)
    return seen


def image_site(model_dir: Path, target: Path) -> Path:
    """Link the files of the image's distributions (code and .dist-info, so metadata lookups work) into `target`.

    A top-level folder that one distribution owns is linked whole; one shared by several (namespace packages:
    google.*, opentelemetry.*) is rebuilt from the files of the image's distributions alone.
    """
    from packaging.utils import canonicalize_name

    lines = (model_dir / "requirements.txt").read_text(encoding="utf-8").split()
    wanted = requirement_closure([line for line in lines if not line.startswith("-")] + list(IMAGE_EXTRAS))
    owners: dict[str, set[str]] = {}
    files: dict[str, list[tuple[Path, Path]]] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or []:
            if file.parts[0] == "..":  # console scripts, outside site-packages
                continue
            owners.setdefault(file.parts[0], set()).add(name)
            if name in wanted:
                files.setdefault(file.parts[0], []).append((Path(file), Path(dist.locate_file(file))))
    target.mkdir(parents=True, exist_ok=True)
    for top, entries in files.items():
        if len(owners[top]) == 1:
            relative, source = entries[0]
            (target / top).symlink_to(source.parents[len(relative.parts) - 2] if len(relative.parts) > 1 else source)
            continue
        for relative, source in entries:
            link = target / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(source)
    return target


def main(model_dir: str, request: str) -> None:
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_dir)
    print(json.dumps(model.predict(json.loads(request)), ensure_ascii=False))


if __name__ == "__main__":
    main(*sys.argv[1:])
