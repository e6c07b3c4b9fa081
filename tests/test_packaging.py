"""The distribution: no backend required, one clear error without one, no import hooks,
`__all__` on every public module, the license it declares."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import keras_bn_tools

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax", "torch")

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    environ = {**os.environ, "PYTHONPATH": path, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False, env=environ)  # fmt: skip


def _pyproject() -> dict:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_import_without_the_backend_names_the_extras(backend):
    """The backend is hidden (None in sys.modules makes its import fail, as if it were not
    installed); the error is one ImportError that names the backend and the extras."""
    code = (
        f"import sys\nsys.modules[{backend!r}] = None\n"
        "try:\n    import keras_bn_tools\nexcept ImportError as error:\n"
        "    print(type(error).__name__, error.__cause__, '|', error)\n"
    )
    result = _python(code, KERAS_BACKEND=backend)
    assert result.returncode == 0, result.stderr
    kind, _, message = result.stdout.strip().rpartition("|")
    assert kind.split() == ["ImportError", "None"]  # one error, no chained traceback
    assert f"configured for {backend!r}" in message and "KERAS_BACKEND=" + backend in message
    assert "keras-bn-tools[tensorflow]" in message and "[jax], [torch], [all]" in message


def test_import_installs_no_hook_and_registers_the_layers():
    code = (
        "import sys\nbefore = list(sys.meta_path)\nimport keras_bn_tools, keras\n"
        "added = [f for f in sys.meta_path if f not in before and "
        "type(f).__module__.startswith('keras_bn_tools')]\n"
        "assert not added, added\n"
        "for name in ('MomentumBatchNormalization', 'ChannelAffine', 'BatchNormLSTM', "
        "'BatchNormLSTMCell'):\n"
        "    cls = keras.saving.get_registered_object(f'keras_bn_tools>{name}')\n"
        "    assert cls is getattr(keras_bn_tools.layers, name), name\n"
        "print('ok')\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_package_namespace_holds_only_the_public_api():
    names = dir(keras_bn_tools)
    for helper in ("sys", "warnings", "importlib", "Any", "annotations", "os", "typing"):
        assert helper not in names
    assert set(keras_bn_tools.__all__) <= set(names)
    for name in keras_bn_tools.__all__:
        assert getattr(keras_bn_tools, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        keras_bn_tools.nope  # noqa: B018


def _public_modules() -> list[str]:
    modules = ["keras_bn_tools"]
    for info in pkgutil.walk_packages(keras_bn_tools.__path__, "keras_bn_tools."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            modules.append(info.name)
    return modules


def test_every_public_module_declares_all():
    modules = _public_modules()
    assert {"keras_bn_tools.layers", "keras_bn_tools.cli", "keras_bn_tools.studies"} <= set(modules)
    missing = []
    for name in modules:
        module = importlib.import_module(name)
        if not isinstance(getattr(module, "__all__", None), list | tuple):
            missing.append(name)
            continue
        for attr in module.__all__:
            assert hasattr(module, attr), f"{name}.__all__ names {attr!r}, which it lacks"
    assert not missing, f"modules without __all__: {missing}"


def test_dependencies_name_no_backend_and_extras_install_each():
    project = _pyproject()["project"]
    required = " ".join(project["dependencies"])
    assert not any(backend in required for backend in BACKENDS)
    extras = project["optional-dependencies"]
    for backend in BACKENDS:
        assert any(spec.startswith(backend) for spec in extras[backend]), backend
    assert extras["all"] == ["keras-bn-tools[tensorflow,jax,torch]"]
    assert project["scripts"]["keras-bn-tools"] == "keras_bn_tools_cli:main"


def test_license_file_is_the_declared_license():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX" in text
    assert len(text.splitlines()) == 202  # the full standard text
