"""Import shims that let the real nnU-Net v1 (nnunet==1.7.1) crop / analyze / plan without PyTorch.

Runs inside the side env only (see side_env.py); call ``install()`` before importing ``nnunet``
submodules. Nothing of nnU-Net's own logic is replaced:

1. ``torch``: ``nnunet.experiment_planning.utils`` (home of ``crop()``) and the planners import
   ``Generic_UNet``, whose modules import torch and evaluate ``class X(nn.Module)``, default
   arguments such as ``conv_op=nn.Conv2d`` and type hints such as ``torch.tensor`` at import time.
   No torch function runs on the crop / DatasetAnalyzer / ``plan_experiment()`` path (the planner only
   calls the static ``Generic_UNet.compute_approx_vram_consumption``, which is numpy arithmetic).
   A meta-path finder answers ``import torch[.x.y]`` with stub modules. Every attribute of a stub
   module, and every attribute of such an attribute, is a *placeholder class*: it can be
   subclassed, referenced, put in ``Union[...]``; calling or instantiating it (or any subclass of
   it, e.g. ``Generic_UNet(...)``) raises ``TorchStubCalled``. So a code path that really needs
   torch fails loudly instead of computing something else. The stub is not installed if a real
   torch is importable.

2. ``nnunet.training.model_restore``: the real module imports ``nnUNetTrainer`` and with it the
   whole training stack (matplotlib, sklearn, ...). The planner modules only need its
   ``recursive_find_python_class`` name at import time (it is called by ``run_preprocessing()``,
   which the harness never runs). The shim module holds exactly that function, compiled from the
   installed ``model_restore.py`` source, together with the module-level imports that the
   function's free names come from; every free name is checked to resolve.
"""
from __future__ import annotations

import ast
import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

__all__ = ["install", "TorchStubCalled", "torch_is_stubbed"]


class TorchStubCalled(RuntimeError):
    """A torch placeholder was called or instantiated: this code path needs real PyTorch."""


class _PlaceholderMeta(type):
    """Metaclass of the placeholders. Attribute lookups on a placeholder itself (not on a real class
    derived from one) give child placeholders, so ``nn.Module`` works whether ``nn`` is the stub
    module ``torch.nn`` or a placeholder; calling any class of this metaclass raises."""

    def __getattr__(cls, name):
        if name.startswith("__") or "_torch_stub_name" not in cls.__dict__:
            raise AttributeError(name)
        return _placeholder(cls.__dict__["_torch_stub_name"] + "." + name)

    def __call__(cls, *args, **kwargs):
        what = cls.__dict__.get("_torch_stub_name") or "%s (a subclass of a torch placeholder)" % cls.__qualname__
        raise TorchStubCalled("%s was called/instantiated, but torch is a stub in the nnU-Net v1 side env" % what)

    def __repr__(cls):
        name = cls.__dict__.get("_torch_stub_name")
        return "<torch stub %s>" % name if name else type.__repr__(cls)


_PLACEHOLDERS: dict[str, type] = {}


def _placeholder(qualified: str) -> type:
    cls = _PLACEHOLDERS.get(qualified)
    if cls is None:
        cls = _PlaceholderMeta(qualified.rsplit(".", 1)[-1], (),
                               {"_torch_stub_name": qualified, "__module__": "v1_shims.torch_stub"})
        _PLACEHOLDERS[qualified] = cls
    return cls


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        sub = sys.modules.get(self.__name__ + "." + name)
        return sub if sub is not None else _placeholder(self.__name__ + "." + name)


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torch" or fullname.startswith("torch."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = _StubModule(spec.name)
        mod.__path__ = []
        mod.__version__ = "0+v1_shims.stub"
        mod.__torch_stub__ = True
        return mod

    def exec_module(self, module):
        parent, _, child = module.__name__.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)


_FINDER = _StubFinder()


def torch_is_stubbed() -> bool:
    return _FINDER in sys.meta_path


def _install_torch_stub() -> None:
    if torch_is_stubbed():
        return
    if "torch" in sys.modules or importlib.util.find_spec("torch") is not None:
        return  # a real torch exists; use it
    sys.meta_path.insert(0, _FINDER)


def _free_names(func: ast.FunctionDef) -> set[str]:
    bound = {a.arg for a in func.args.args + func.args.kwonlyargs + func.args.posonlyargs}
    for a in (func.args.vararg, func.args.kwarg):
        if a is not None:
            bound.add(a.arg)
    loads = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not func:
            bound.add(node.name)
    return loads - bound - set(dir(builtins)) - {func.name}


def _install_model_restore_shim() -> None:
    name = "nnunet.training.model_restore"
    if name in sys.modules:
        return
    import nnunet.training  # the real, empty package

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise RuntimeError("cannot locate %s in the installed nnunet" % name)
    src = open(spec.origin, encoding="utf-8").read()
    tree = ast.parse(src, filename=spec.origin)
    func = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "recursive_find_python_class"]
    if len(func) != 1:
        raise RuntimeError("recursive_find_python_class not found in %s" % spec.origin)
    needed = _free_names(func[0])

    # Keep the module-level imports that bind a needed name, plus star imports from modules outside
    # the training stack (``from batchgenerators...file_and_folder_operations import *`` gives ``join``).
    keep = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            if any((a.asname or a.name.split(".")[0]) in needed for a in node.names):
                keep.append(node)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            star = any(a.name == "*" for a in node.names)
            if star and not node.module.startswith(("nnunet.training", "torch")):
                keep.append(node)
            elif not star and any((a.asname or a.name) in needed for a in node.names):
                keep.append(node)

    mod = types.ModuleType(name, "nnU-Net v1 model_restore reduced to recursive_find_python_class (v1_shims)")
    mod.__file__ = spec.origin
    mod.__v1_shim__ = True
    code = compile(ast.Module(body=keep + func, type_ignores=[]), spec.origin, "exec")
    exec(code, mod.__dict__)
    missing = sorted(n for n in needed if n not in mod.__dict__)
    if missing:
        raise RuntimeError("model_restore shim: names %s used by recursive_find_python_class are unbound" % missing)

    def __getattr__(attr):
        raise AttributeError("%s is shimmed by v1_shims (only recursive_find_python_class); '%s' needs the "
                             "training stack" % (name, attr))

    mod.__getattr__ = __getattr__
    sys.modules[name] = mod
    nnunet.training.model_restore = mod


def install() -> None:
    """Install both shims (idempotent). Set nnUNet_* env vars before calling: this imports nnunet."""
    _install_torch_stub()
    _install_model_restore_shim()
