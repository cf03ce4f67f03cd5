"""Reading the datasets' text and JSON files with errors that name the file and line."""
import contextlib
import json
import logging
import math
import os
import re
import sys


def decode_utf8(data, path, format_error, first_line=1):
    """Decode UTF-8 bytes; invalid bytes raise ``format_error`` naming file, line and column.

    Args:
        data (bytes): the text, which starts on line ``first_line`` of ``path``.
        path (str): the file, for the message.
        format_error (type): the exception raised.

    Raises:
        ``format_error``: "<path>:<line>: invalid UTF-8 (byte 0x.. at column .., ...)".
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        column = e.start - data.rfind(b"\n", 0, e.start)  # 1-based, in bytes
        raise format_error(f"{path}:{line}: invalid UTF-8 (byte 0x{data[e.start]:02x} at column "
                           f"{column}: {e.reason})") from None


def iter_text_lines(path, format_error):
    """Yield ``(line number, line)`` for each line of a UTF-8 text file (line ends kept).

    The file is read as bytes and decoded line by line: a text-mode file object would raise a
    bare ``UnicodeDecodeError`` that says neither the file nor the line.

    Raises:
        FileNotFoundError; ``format_error``: invalid UTF-8, naming file and line.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            yield lineno, decode_utf8(raw, path, format_error, first_line=lineno)


# --------------------------------------------------------------------------------------------
# Files inside uncompressed zip archives: "archive.zip@/inner/path" (the official Conceptual
# Captions preparation stores images and detection files this way).

logger = logging.getLogger(__name__)

ZIP_SEPARATOR = ".zip@"
_ZIP_HANDLES = {}  # (pid, archive) -> ZipFile: one handle per process (data-loader workers fork)


def split_zip_path(path):
    """``"a/b.zip@/c/d.jpg"`` -> ``("a/b.zip", "c/d.jpg")``; ``(None, path)`` for a plain path."""
    if ZIP_SEPARATOR not in path:
        return None, path
    archive, inner = path.split(ZIP_SEPARATOR, 1)
    return archive + ".zip", inner.lstrip("/")


def _zip_handle(archive):
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


# --------------------------------------------------------------------------------------------
# JSON and JSON-lines files.

class _InvalidNumber(ValueError):
    """A number JSON parsing refuses; ``token`` is its text in the file."""

    def __init__(self, message, token):
        super().__init__(message)
        self.token = token


# Python's json accepts the non-standard literals NaN, Infinity and -Infinity, and reads a float
# too large for a double (1e999) as inf. The datasets' official files never contain them, and a
# non-finite width, box coordinate, feature or score is always a corrupt record, which downstream
# surfaces as an OverflowError in int(), a NaN loss or a silently wrong mask. They are refused
# here, where the file and line are known.
def _refuse_constant(token):
    raise _InvalidNumber(f"{token} is not a finite number", token)


def _parse_float(token):
    value = float(token)
    if math.isinf(value):  # NaN can only come from the literal, refused above
        raise _InvalidNumber(f"{token} is out of the range of a float", token)
    return value


_DECODER = json.JSONDecoder(parse_float=_parse_float, parse_constant=_refuse_constant)
# A Python parse_float costs a call per number (it halves the parsing speed of metadata full of
# polygon coordinates); only text with a 3-digit exponent can hold a float beyond the double range
# as written in practice (1e999). A mantissa of 309+ digits would also overflow; scanning for
# that costs more than the parse, and the readers' own checks refuse non-finite boxes, sizes and
# features wherever such a value could land.
_FAST_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_MAYBE_HUGE = re.compile(r"[eE][+-]?\d{3}")


def _line_of(text, token_pattern):
    """The line of the first JSON value matching ``token_pattern``, as ":N" ("" if not found).

    Only for messages: the json module does not say where a number it could not convert is.
    A value follows the start of the text, "[", ":" or ","."""
    m = re.search(r"(?:^|[\[:,])\s*(?:" + token_pattern + r")(?![\w.+-])", text)
    if m is None:
        return ""
    line = text.count("\n", 0, m.end()) + 1
    return f":{line}"


def _parse_json(text, source, format_error, bad, whole_file):
    """Parse JSON text, turning every parse failure into ``format_error`` naming ``source``.

    Args:
        source (str): "path" for a whole file, "path:line" for a line of a JSON-lines file.
        whole_file (bool): ``source`` is a whole file: the message adds the line where it can.
    """
    try:
        return (_DECODER if _MAYBE_HUGE.search(text) else _FAST_DECODER).decode(text)
    except json.JSONDecodeError as e:  # its message gives line and column
        raise format_error(f"{source}: {bad} ({e})") from None
    except _InvalidNumber as e:
        where = source + (_line_of(text, re.escape(e.token)) if whole_file else "")
        raise format_error(f"{where}: {bad} ({e}; NaN, Infinity and numbers beyond the float "
                           "range are refused)") from None
    except ValueError as e:  # an integer longer than sys.get_int_max_str_digits()
        limit = getattr(sys, "get_int_max_str_digits", lambda: 0)()  # Python >= 3.11 (and backports)
        where = source + (_line_of(text, r"-?\d{%d,}" % (limit + 1)) if whole_file and limit else "")
        raise format_error(f"{where}: {bad} ({e})") from None
    except RecursionError:
        raise format_error(f"{source}: {bad} (nested too deeply: arrays and objects within each "
                           f"other beyond Python's recursion limit of {sys.getrecursionlimit()})") from None


def read_json(path, format_error, what, bad="malformed JSON", hint=""):
    """Parse a JSON file, or a member of an uncompressed zip archive (``archive.zip@/inner``).

    Args:
        format_error (type): the exception raised (with the file's name) on invalid JSON.
        what (str): what the file is, for the not-found message ("VQA file").
        bad (str): how the invalid-JSON message describes the problem.
        hint (str): appended to the not-found message.

    Raises:
        FileNotFoundError: "<what> not found: <path>"; ``format_error``: "<path>[:line]: <bad>
        (...)" for malformed JSON, invalid UTF-8, non-finite numbers (see ``_refuse_constant``),
        integers beyond Python's int-string limit and nesting beyond the recursion limit.
    """
    try:
        # Whole, then decoded: the memory peak of json.load on a text file (it holds the bytes
        # and the text at once too), and the position of an invalid byte is known.
        data = read_bytes(path)
    except FileNotFoundError as e:
        # A zip archive's message says whether the archive or the member is missing.
        raise FileNotFoundError(f"{what} not found: {e if ZIP_SEPARATOR in path else path}{hint}") from None
    text = decode_utf8(data, path, format_error)
    del data
    return _parse_json(text, path, format_error, bad, whole_file=True)


read_json_any = read_json  # the former name of the zip-aware reader, kept for callers


def iter_json_lines(path, format_error, required=(), skip_blank=False):
    """Yield ``(source, record)`` for each line of a JSON-lines file, ``source`` being
    ``"path:line"``; a line that is not a JSON object with the ``required`` fields raises
    ``format_error`` naming the file, the line and the field. Blank lines are skipped when
    ``skip_blank``, else an error. Invalid UTF-8 and the numbers and nesting that
    :func:`read_json` refuses are errors naming the line too."""
    for lineno, line in iter_text_lines(path, format_error):
        source = f"{path}:{lineno}"
        if not line.strip():
            if skip_blank:
                continue
            raise format_error(f"{source}: empty line")
        record = _parse_json(line, source, format_error, "malformed JSON", whole_file=False)
        if not isinstance(record, dict):
            raise format_error(f"{source}: a line must be a JSON object, got {type(record).__name__}")
        for field in required:
            if field not in record:
                raise format_error(f"{source}: missing field '{field}'")
        yield source, record


# --------------------------------------------------------------------------------------------
# Writing files so that no reader (nor a crash) ever sees half of one.

@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """Open a temporary file beside ``path`` for writing; when the block ends without error it
    is flushed to disk and renamed over ``path`` (a rename within a folder is atomic), else it
    is removed. The temporary name ends in ``.tmp.<pid>``, so that a later run can tell the
    leftovers of a killed process (``vlbert_d2.checkpoint.checkpointer.remove_stale_temporaries``).

    Example::

        with atomic_write("out.json", "w", encoding="utf-8") as f:
            json.dump(record, f)
    """
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            with contextlib.suppress(OSError):  # the write's own error is the one to report
                os.remove(tmp)


_TEMPORARY = re.compile(r"\.tmp\.(\d+)$")  # atomic_write's temporary files


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder):
    """Delete the temporary files of writes that a killed process left in ``folder`` (they can
    be as large as a checkpoint); those of live processes are kept. Returns the names removed."""
    removed = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        m = _TEMPORARY.search(name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    if removed:
        logger.warning("Removed %d partial file(s) of an interrupted write in %s: %s", len(removed),
                       folder, ", ".join(removed))
    return removed
