"""fastx: Triton-accelerated transformer inference.

`import fastx.ops` gives torch.nn.functional-style ops backed by Triton kernels.
"""

import importlib.util as _importlib_util
import os as _os
import sys as _sys

# FASTX_BACKEND=triton on a machine without CUDA means "run the kernels in Triton's CPU
# interpreter". The interpreter must be chosen before any @triton.jit kernel is defined, i.e.
# before a fastx.kernels module is imported, so it is switched on here (an explicit
# TRITON_INTERPRET wins).
if _os.environ.get("FASTX_BACKEND", "").strip().lower() == "triton" and "TRITON_INTERPRET" not in _os.environ:
    import torch as _torch

    if not _torch.cuda.is_available():
        _os.environ["TRITON_INTERPRET"] = "1"


def _alias_source_kernels() -> None:
    """Make `fastx.kernels` importable when fastx is imported from a source checkout.

    Installed, the repo-root folder kernels/ sits at fastx/kernels (pyproject's package-dir). A
    script run from the checkout's root imports this folder instead of the installed copy; there
    the kernels are the sibling folder, registered here under their installed name.
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    source = _os.path.join(_os.path.dirname(here), "kernels", "__init__.py")
    if "fastx.kernels" in _sys.modules or _os.path.isdir(_os.path.join(here, "kernels")) or not _os.path.isfile(source):
        return
    spec = _importlib_util.spec_from_file_location(
        "fastx.kernels", source, submodule_search_locations=[_os.path.dirname(source)]
    )
    module = _importlib_util.module_from_spec(spec)
    _sys.modules["fastx.kernels"] = module
    spec.loader.exec_module(module)


_alias_source_kernels()

__version__ = "0.1.0"

# The public API, imported on first use so `import fastx` stays light (no model or engine code).
_LAZY = {
    "LLM": "fastx.engine.llm",
    "RequestOutput": "fastx.engine.llm",
    "CompletionOutput": "fastx.engine.llm",
    "SamplingParams": "fastx.engine.sampling_params",
    "AutoConfig": "fastx.models",
    "AutoModel": "fastx.models",
    "AutoModelForCausalLM": "fastx.models",
    "AutoModelForMaskedLM": "fastx.models",
    "AutoModelForSequenceClassification": "fastx.models",
    "AutoModelForTokenClassification": "fastx.models",
    "AutoModelForImageClassification": "fastx.models",
    "AutoModelForQuestionAnswering": "fastx.models",
    "AutoTokenizer": "fastx.processing",
    "AutoImageProcessor": "fastx.processing",
    "pipeline": "fastx.pipelines",
    # Models shipped inside pip packages: they work offline, on any machine.
    "default_generation_model": "fastx.checkpoints.defaults",
    "default_embedding_model": "fastx.checkpoints.defaults",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastx' has no attribute {name!r}")
