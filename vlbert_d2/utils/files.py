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
