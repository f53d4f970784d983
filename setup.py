"""Installable package for the CPCL reimplementation.

The dataset presets live in `cpcl/presets/` (no top-level module named `config` exists that
could shadow `exp_*/config.py`).
"""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="cpcl",
    version="0.1.0",
    description="Conservative-Progressive Collaborative Learning for semi-supervised semantic segmentation",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["cpcl", "cpcl.*"]),
    install_requires=requirements,
    extras_require={"test": ["pytest>=7", "ruff>=0.4"]},
    license="MIT",
)
