"""An exported metatomic model file, refused with one sentence when it cannot be one.

``torch.jit.save`` (what ``mtt export`` and ``AtomisticModel.save`` call) writes a zip
archive; random bytes, a truncated copy or an empty file are not one, and torch's own
message for them ("PytorchStreamReader failed ... internal miniz error") names neither
the file nor the fix. A zip that loads badly (damaged inside, or written by an
incompatible version) is reported with torch's first line and the file's name. A zip
that is no TorchScript archive at all (a metatrain ``.ckpt``, which ``torch.save``
wrote: no ``code/`` inside) gets the ``mtt export`` command that makes one.
"""

from __future__ import annotations

import contextlib
import os
import zipfile

__all__ = ["check_model_file", "loading_model_file"]


def check_model_file(path) -> str:
    """``path`` as a string, if it names a file that can hold an exported model."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"model file {path!r} is a directory; give the exported "
                                ".pt file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"model file {path!r} is not an exported model (not a TorchScript "
                         "archive): the file is damaged or of another kind; export the "
                         "model with `mtt export` and pass that .pt file")
    return path


@contextlib.contextmanager
def loading_model_file(path):
    """Check ``path`` and turn torch's load errors inside the block into one sentence."""
    path = check_model_file(path)
    try:
        yield path
    except ValueError as error:  # metatomic: "file at ... does not contain a metatomic model"
        if "metatomic model" not in str(error):
            raise
        raise ValueError(_not_exported(path, str(error))) from None
    except RuntimeError as error:
        first = next((line.strip() for line in str(error).splitlines() if line.strip()),
                     type(error).__name__)
        if _is_device_error(first):
            raise ValueError(f"model file {path!r} loads, but the requested device is not "
                             f"available on this machine ({first}); pass another device "
                             "(device='cpu', --device cpu) or run where it exists") from None
        raise ValueError(f"cannot load model file {path!r} ({first}): is it damaged, or "
                         "exported with another metatomic version? re-export it with "
                         "`mtt export`") from None


def _not_exported(path: str, cause: str) -> str:
    """The sentence for a zip metatomic cannot load as a model."""
    if not _is_torchscript(path):
        exported = os.path.splitext(path)[0] + ".pt"
        if os.path.abspath(exported) == os.path.abspath(path):  # never overwrite the input
            exported = os.path.splitext(path)[0] + "-exported.pt"
        return (f"model file {path!r} is a checkpoint, not an exported model ({cause}); "
                f"export it with `mtt export {path} -o {exported}` and pass {exported!r} "
                "(`symmon eval` also takes the checkpoint)")
    return (f"model file {path!r} holds no metatomic model ({cause}); export the model "
            "with `mtt export` and pass that .pt file")


def _is_device_error(text: str) -> bool:
    """torch's or metatomic's words for a device this machine does not have."""
    text = text.lower()
    return ("device" in text and ("not available" in text or "failed to find" in text)) \
        or "torch.cuda.is_available() is false" in text or "no cuda gpus" in text \
        or ("cuda" in text and "not compiled" in text)


def _is_torchscript(path: str) -> bool:
    """Whether the zip at ``path`` holds TorchScript code (``<archive>/code/...``)."""
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())
