"""Loading pickles without running code.

Pickles can call any importable function when loaded. The files this project reads as pickles
(detector weights ``.pkl``, RefCOCO+'s ``refs(unc).p``) only need plain containers, numbers,
strings and, for weights, numpy arrays; :func:`restricted_load` rebuilds exactly those and
refuses any other global with :class:`UnsafePickleError`.
"""
import pickle

# Protocol-2 pickles written by Python 3 store bytes through _codecs.encode (harmless).
PLAIN_GLOBALS = frozenset({("_codecs", "encode")})
NUMPY_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
})


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that asks for something other than what its kind of file may hold."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path, allowed, what):
        super().__init__(file, encoding="latin1")  # latin1: pickles written by Python 2
        self._path, self._allowed, self._what = path, allowed, what

    def find_class(self, module, name):
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._path}: refusing to load '{module}.{name}': {self._what} may only hold "
            "plain containers, numbers and strings"
            + (" and numpy arrays" if self._allowed & NUMPY_GLOBALS else "")
            + " (loading anything else can run code)")


def restricted_load(path, allowed=PLAIN_GLOBALS, what="this file"):
    """Unpickle ``path`` allowing only the builtin containers and the ``allowed`` globals.

    Args:
        path (str): the pickle file.
        allowed (set of (module, name)): globals the file may use (e.g. :data:`NUMPY_GLOBALS`).
        what (str): what the file is, for the error message ("a weights file").

    Raises:
        UnsafePickleError: the file asks for another global (nothing of it is run).
        pickle.UnpicklingError: the file is not a readable pickle (message names the file).
        FileNotFoundError: no such file.
    """
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, path, frozenset(allowed), what).load()
        except UnsafePickleError:
            raise
        except Exception as e:
            raise pickle.UnpicklingError(f"{path}: cannot read it as a pickle: {type(e).__name__}: {e}") from e
