"""ml_collections config files, one per experiment, and the launchers' ``--config`` flag.

The config files ship inside the installed package, so a launcher finds them from any working
directory: ``--config=prorl.py:demo`` names the packaged ``experiments/configs/prorl.py`` with
the variant ``demo``. The repository-relative form ``experiments/configs/prorl.py:demo`` keeps
working, and a path to an existing file of one's own (``--config=my_prorl.py:demo``) is used as
given.
"""

from __future__ import annotations

import os
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
_PREFIX = "experiments/configs/"


def resolve(spec: str) -> str:
    """The ``path[:variant]`` config spec with ``path`` made absolute.

    An existing file (relative to the working directory, or absolute) is taken as given; else a
    bare file name (``prorl.py``) or the repository-relative ``experiments/configs/prorl.py``
    names the config file shipped with the package.

    Raises:
      FileNotFoundError: the file exists neither as given nor among the packaged configs (the
        message lists the packaged ones).
    """
    path, sep, variant = spec.partition(":")
    if os.path.isfile(path):
        return os.path.abspath(path) + sep + variant
    name = path.removeprefix(_PREFIX)
    packaged = HERE / name
    if name and "/" not in name and packaged.is_file():
        return str(packaged) + sep + variant
    known = ", ".join(sorted(p.name for p in HERE.glob("*.py") if p.name != "__init__.py"))
    raise FileNotFoundError(
        f"config file {path!r} (from --config={spec!r}) exists neither relative to "
        f"{os.getcwd()} nor among the packaged configs ({known})")


def define_config_flag(default: str, help_string: str = "Experiment config (variant after ':').",
                       name: str = "config", flag_values=None):
    """Defines the absl flag ``--<name>`` holding a ConfigDict loaded from a resolved spec.

    Call it where the launcher defines its flags (only when run as a program). Overrides such as
    ``--config.rl.steps=10`` work as with ``config_flags.DEFINE_config_file``.
    """
    from absl import flags
    from ml_collections import config_flags
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    flag_values = flags.FLAGS if flag_values is None else flag_values
    holder = config_flags.DEFINE_config_file(name, resolve(default), help_string,
                                             flag_values=flag_values)

    class _Resolving(ConfigFileFlagParser):
        def parse(self, path):
            try:
                path = resolve(path)
            except FileNotFoundError as e:  # absl reports ValueError as a flag error
                raise ValueError(str(e)) from None
            return super().parse(path)

    flag_values[name].parser = _Resolving(name=name)
    return holder
