"""Reading the datasets' JSON files with errors that name the file."""
import json


def read_json(path, format_error, what, bad="malformed JSON", hint=""):
    """Parse a JSON file.

    Args:
        format_error (type): the exception raised (with the file's name) on invalid JSON.
        what (str): what the file is, for the not-found message ("VQA file").
        bad (str): how the invalid-JSON message describes the problem.
        hint (str): appended to the not-found message.

    Raises:
        FileNotFoundError: "<what> not found: <path>"; ``format_error``: "<path>: <bad> (...)".
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}{hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise format_error(f"{path}: {bad} ({e})") from None


# --------------------------------------------------------------------------------------------
# Files inside uncompressed zip archives: "archive.zip@/inner/path" (the official Conceptual
# Captions preparation stores images and detection files this way).

ZIP_SEPARATOR = ".zip@"
_ZIP_HANDLES = {}  # (pid, archive) -> ZipFile: one handle per process (data-loader workers fork)


def split_zip_path(path):
    """``"a/b.zip@/c/d.jpg"`` -> ``("a/b.zip", "c/d.jpg")``; ``(None, path)`` for a plain path."""
    if ZIP_SEPARATOR not in path:
        return None, path
    archive, inner = path.split(ZIP_SEPARATOR, 1)
    return archive + ".zip", inner.lstrip("/")


def _zip_handle(archive):
    import os
    import zipfile

    key = (os.getpid(), archive)
    handle = _ZIP_HANDLES.get(key)
    if handle is None:
        # ZipFile reads only the central directory here; members are read by seeking, so the
        # archive is never loaded whole. A handle opened by a parent process is not reused in a
        # forked worker (its file offset would be shared), hence the pid in the key.
        handle = _ZIP_HANDLES[key] = zipfile.ZipFile(archive, "r")
    return handle


def read_bytes(path):
    """The bytes of a file, or of a member of an uncompressed zip archive
    (``"archive.zip@/inner/path"``).

    Raises:
        FileNotFoundError: naming the archive or the member that is missing.
    """
    archive, inner = split_zip_path(path)
    if archive is None:
        with open(path, "rb") as f:
            return f.read()
    import zipfile

    try:
        handle = _zip_handle(archive)
    except FileNotFoundError:
        raise FileNotFoundError(f"zip archive not found: {archive} (for {path})") from None
    except zipfile.BadZipFile as e:
        raise OSError(f"{archive}: not a readable zip archive ({e})") from None
    try:
        return handle.read(inner)
    except KeyError:
        raise FileNotFoundError(f"{archive}: no member '{inner}' (for {path})") from None


def path_exists(path):
    """Whether a file (or a zip archive's member, see :func:`read_bytes`) exists."""
    import os

    archive, inner = split_zip_path(path)
    if archive is None:
        return os.path.exists(path)
    if not os.path.isfile(archive):
        return False
    try:
        _zip_handle(archive).getinfo(inner)
        return True
    except KeyError:
        return False


def read_json_any(path, format_error, what, bad="malformed JSON"):
    """:func:`read_json` for a plain file or a zip member (``archive.zip@/inner``)."""
    if ZIP_SEPARATOR not in path:
        return read_json(path, format_error, what, bad)
    try:
        data = read_bytes(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{what} not found: {e}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise format_error(f"{path}: {bad} ({e})") from None


def iter_json_lines(path, format_error, required=(), skip_blank=False):
    """Yield ``(source, record)`` for each line of a JSON-lines file, ``source`` being
    ``"path:line"``; a line that is not a JSON object with the ``required`` fields raises
    ``format_error`` naming the file, the line and the field. Blank lines are skipped when
    ``skip_blank``, else an error."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            source = f"{path}:{lineno}"
            if not line.strip():
                if skip_blank:
                    continue
                raise format_error(f"{source}: empty line")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise format_error(f"{source}: malformed JSON ({e})") from None
            if not isinstance(record, dict):
                raise format_error(f"{source}: a line must be a JSON object, got {type(record).__name__}")
            for field in required:
                if field not in record:
                    raise format_error(f"{source}: missing field '{field}'")
            yield source, record
