"""Packaging for gscnn_tf: Gated-SCNN in TensorFlow 2 / Keras 3."""

from setuptools import find_packages, setup

setup(
    name="gscnn_tf",
    version="0.1.0",
    description="Gated Shape CNNs for semantic segmentation in TensorFlow 2 / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["gscnn_tf", "gscnn_tf.*"]),
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<4",
        "numpy>=1.26",
        "scipy>=1.11",
        "opencv-python-headless>=4.8",
        "pyyaml>=6.0",
        "tensorboard>=2.21,<2.22",
        "flatbuffers>=24.3.25",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "scikit-image>=0.22",
            "ai-edge-litert>=2.0",
            "cityscapesscripts>=2.2",
            "tensorflow-serving-api>=2.19",
            "torch==2.13.0",
        ],
        "litert": ["ai-edge-litert>=2.0"],
        "cityscapes": ["cityscapesscripts>=2.2"],
        "serving": ["tensorflow-serving-api>=2.19"],
        "convert": ["torch==2.13.0"],
    },
    entry_points={"console_scripts": ["gscnn-tf=gscnn_tf.cli:main"]},
)
