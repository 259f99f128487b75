"""Package list for setuptools (metadata is in pyproject.toml).

conf/ (the Hydra config groups) is mapped into the package as ``scoresde.conf`` so that the apps
find it as ``pkg://scoresde.conf`` once installed; ``find_packages`` cannot discover a mapped
directory, hence this file.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["scoresde", "scoresde.*"]) + ["scoresde.conf"],
    package_dir={"scoresde.conf": "conf"},
)
