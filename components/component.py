"""The decorator every KFP component of the pipeline uses, and the image it runs in.

Image contract: every component runs in one image that has this project installed (`pip install .` of this
repository, which brings kfp, mlflow, torch and the `neuroq`, `components` and `serving` packages). Only a
component's function body is shipped in the compiled YAML, so each body imports the project inside itself;
nothing is pip-installed at run time (`packages_to_install` is empty and `install_kfp_package=False`), which keeps
runs reproducible, offline-capable and fast. The pipeline's `image` parameter names the image to run; locally
`kfp.local.SubprocessRunner` ignores it and uses the current environment, which is the same installation.

The component modules do not use `from __future__ import annotations`: KFP reads the annotations as types.
"""

from __future__ import annotations

import functools

from kfp import dsl

# Tag it with the project version; the pipeline's `image` parameter overrides it per run.
DEFAULT_IMAGE = "ghcr.io/neuroq/neuroq-mlops:0.1.0"

component = functools.partial(
    dsl.component, base_image=DEFAULT_IMAGE, packages_to_install=[], install_kfp_package=False
)
