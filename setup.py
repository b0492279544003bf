from setuptools import find_packages, setup

setup(
    name="tuneavideo_ms",
    version="0.1.0",
    description="Tune-A-Video (one-shot video tuning of Stable Diffusion) on MindSpore",
    packages=find_packages(include=["tuneavideo_ms", "tuneavideo_ms.*", "weights_convert",
                                    "weights_convert.*"]),
    package_data={"tuneavideo_ms": ["demo.yaml", "assets/*.mp4", "runtime/csrc/*.cc", "runtime/csrc/*.h"]},
    python_requires=">=3.9",
    install_requires=[
        "mindspore==2.10.0",
        "numpy>=1.24,<2",
        "omegaconf>=2.3",
        "imageio>=2.31",
        "pillow>=9.1",  # frames resized as the benchmark resizes them, and CLIP's image processor
        "imageio-ffmpeg>=0.4.9",
        # mindone requires opencv-python; the headless build beside it would be a second copy of cv2.
        # 4.12 and later need numpy 2: pip would backtrack
        "opencv-python>=4.8,<4.12",
        "tqdm>=4.60",
        "transformers==4.57.1",  # CLIPTokenizer; mindone 0.5.0 pins this version too
        "huggingface_hub>=0.34,<1.0",  # 1.x breaks transformers 4.57.1
        "mindone==0.5.0",  # its diffusers schedulers: DPM-Solver++ (and its inverse), Euler, UniPC
    ],
    entry_points={"console_scripts": [
        "tuneavideo-train=tuneavideo_ms.commands.train:main",
        "tuneavideo-edit=tuneavideo_ms.commands.edit:main",
        "tuneavideo-evaluate=tuneavideo_ms.commands.evaluate:main",
        "tuneavideo-convert=weights_convert.__main__:main",
    ]},
    extras_require={
        # PyTorch and diffusers only build fixtures and references in the tests; ruff lints
        "test": ["pytest>=7", "torch==2.13.0", "diffusers==0.35.2", "ruff>=0.6"],
    },
)
