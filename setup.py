"""LocMoE: Mixture-of-Experts training and serving with a locality-aware router.

Install torch explicitly first (``pip install torch==2.13.0`` on CPU machines): a bare ``torch``
requirement resolves to a multi-GB CUDA build. ``scripts/setup_env.sh`` does this for you.
"""

from setuptools import find_packages, setup

setup(
    name="locmoe",
    version="0.1.0",
    description="LocMoE: MoE training and serving whose router keeps tokens close to home",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["locmoe", "locmoe.*", "backends", "backends.*", "models", "models.*"])
    + ["locmoe.configs"],
    # The shipped configs: the top-level configs/ folder (the one source) installs as locmoe/configs/, found by
    # name from anywhere (locmoe.config.shipped); an editable install reads configs/ in place.
    package_dir={"locmoe.configs": "configs"},
    package_data={"locmoe.configs": ["*.yaml", "routers/*.yaml"]},
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "tensorboardX>=2.6",
        "Pillow>=9",  # tensorboardX's add_image (the expert-load images) imports PIL
        "safetensors>=0.4",
        "matplotlib>=3.7",  # the expert-load heatmap (training's default path) and `locmoe report`
    ],
    extras_require={
        "torch": ["torch>=2.9"],
        # MindSpore 2.10 fails with numpy 2 ("numpy.core.multiarray failed to import").
        "mindspore": ["mindspore>=2.10,<2.11", "numpy<2"],
        "npu": ["torch>=2.9", "torch-npu"],
        "tokenizers": ["tokenizers>=0.15"],  # data.tokenizer = a tokenizers JSON file or a tokenizer folder
        # data.sources of parquet / arrow files and save_to_disk folders (locmoe.data.arrow_source). pyarrow 26
        # needs numpy 2 (without declaring it) and MindSpore needs numpy < 2: pyarrow 25 serves both.
        "hf-data": ["pyarrow>=15,<26", "datasets>=2.14"],
        "tensorboard": ["tensorboard>=2.14"],  # to view the logs: tensorboard --logdir runs
        # transformers: the Hugging Face export's tests and scripts/bench/decode.py load the export with it
        # (pinned to what pip installs on CPU; the GPU image's 5.17 loads the same export, checked by hand)
        "hf": ["transformers==5.24.0"],
        # logging.wandb: the same scalars as tensorboard in Weights & Biases (tested offline, no network)
        "wandb": ["wandb>=0.17"],
        # ruff and import-linter: scripts/lint.sh (style and the layering contracts of .importlinter)
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.8",
            "hypothesis>=6.100",
            "tokenizers>=0.15",
            "transformers==5.24.0",
            "ruff==0.17.6",
            "import-linter==2.17",
            "pyright[nodejs]==1.1.414",  # the type check (pyrightconfig.json); [nodejs]: node as a wheel
            "pre-commit>=3.5",  # .pre-commit-config.yaml runs lint.sh's tools before each commit
        ],
    },
    entry_points={"console_scripts": ["locmoe=locmoe.cli:main"]},
)
