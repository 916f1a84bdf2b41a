"""glance_lite: train and run Glance (slow/fast LoRA) acceleration for diffusion transformers on small GPUs."""
from setuptools import find_packages, setup

setup(
    name="glance_lite",
    version="0.1.0",
    description="Memory-optimized Glance acceleration (Slow/Fast LoRA) for Qwen-Image, FLUX.1-dev and Qwen-Image-Edit",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["glance_lite", "glance_lite.*"]) + ["glance_lite.profile_files"],
    package_dir={"glance_lite.profile_files": "profiles"},  # the repo's profiles/ ships as package data
    include_package_data=True,
    package_data={
        "glance_lite": ["configs/*/*.json", "assets/*/*", "assets/pocket_qwen_image/*.json", "assets/pocket_qwen_image/*/*"],
        "glance_lite.profile_files": ["*.yaml"],
    },
    # Ranges are the ones tested: torch 2.13 (CPU, CI) and 2.11 (GPU image); the rest as pinned in constraints.txt.
    install_requires=[
        "torch>=2.11,<2.14",
        "diffusers>=0.42.1,<0.43",
        "transformers>=5.17,<6",
        "peft>=0.21.2,<0.22",
        "accelerate>=1.15,<2",
        "safetensors>=0.6",
        "bitsandbytes>=0.50.2,<0.51",
        "torchao>=0.18,<0.19",  # streamed / sharded transformer storage (diffusers group offloading moves it)
        "optimum-quanto>=0.2.7,<0.3",  # whole components on a CPU and the trainer's frozen base
        "huggingface_hub>=1.0",
        "tokenizers>=0.22",
        "numpy>=1.26",
        "pillow>=10",
        "pyyaml>=6",
        "tqdm>=4.66",
        "psutil>=5.9",
        "matplotlib>=3.8",
    ],
    extras_require={
        # The browser tests drive Debian's chromium + chromedriver through Selenium (no browser download).
        "test": ["pytest>=8", "selenium>=4.51,<5"],
        # `python -m glance_lite.ui`; tested with gradio 6.31 next to constraints.txt (it needs pillow<13: pip takes 12.3).
        "ui": ["gradio>=6.31,<7"],
        "xformers": ["xformers"],
    },
)
