"""Sphinx configuration of recrl's API reference (``make docs``; warnings are errors)."""

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)  # document the checkout beside this file

project = "recrl"
author = "the recrl authors"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax",
              "sphinx.ext.autosummary"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []

autodoc_member_order = "bysource"
autodoc_typehints = "description"  # types beside each argument, signatures stay readable
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # NamedTuple fields: "Attributes:" sections do not duplicate them

# every cross-reference must resolve (``make docs`` runs with -n -W) except those into the
# libraries recrl builds on, whose inventories would need the network
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|numpy|np|flax|nnx|optax|orbax|ocp|ott|chex|absl|ml_collections|"
               r"tokenizers)(\..*)?"),
    (r"py:.*", r"(collections\.abc|typing|os|pathlib|contextlib)\..*"),
    (r"py:.*", r"(Array|ArrayLike|Mesh|NamedSharding|PartitionSpec|PyTree|Callable|Sequence|"
               r"Mapping|Iterable|Iterator|Any|Literal|NamedTuple|PathLike|Path|ndarray|"
               r"dtype|DTypeLike|Module|Rngs|GraphDef|State|Param|Variable)"),
]
