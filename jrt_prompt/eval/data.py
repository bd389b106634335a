"""Rows of the paper's evaluation sets: from the hub (parquet, as hazyresearch published them) or from local
JSONL / JSON / parquet files with the same columns. Reading needs no `datasets` package; parquet needs
pyarrow (installed with the ``eval`` extra)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import JRTError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(JRTError):
    """A data set could not be read: the message names the file or hub id and the local-file alternative."""


def local_hint(task: str, columns: Sequence[str]) -> str:
    return (f"pass a local copy with --data {task}=PATH (a .jsonl or .parquet file, or a folder of them, "
            f"with columns {', '.join(columns)})")


def read_rows(source: str | Path, columns: Sequence[str], task: str) -> list[dict]:
    """Rows of a local file or folder, checked to have ``columns``."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"no such data file or folder for {task}: {path}; {local_hint(task, columns)}")
    files = _data_files(path)
    if not files:
        raise DataError(f"{path} holds no {'/'.join(FILE_SUFFIXES)} files; {local_hint(task, columns)}")
    rows: list[dict] = []
    for f in files:
        got = _read_file(f)
        if got:
            missing = [c for c in columns if c not in got[0]]
            if missing:
                raise DataError(f"{f} lacks column(s) {', '.join(missing)} that {task} needs "
                                f"(it has {', '.join(sorted(got[0]))}); {local_hint(task, columns)}")
        rows += got
    return rows


def _data_files(path: Path) -> list[Path]:
    """A file, or a folder's data files (those of the validation split when the names say which)."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    validation = [p for p in files if "validation" in p.name or "validation" in p.parent.name]
    return validation or files


def _read_file(path: Path) -> list[dict]:
    try:
        if path.suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise DataError(f"reading {path} needs pyarrow: pip install 'jrt-prompt[eval]' "
                                "(or convert it to JSONL)") from None
            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json" and text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - one clear line for any unreadable file
        raise DataError(f"could not read {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path} must hold one JSON object per row")
    return rows


def download(hub_id: str, task: str, columns: Sequence[str]) -> Path:
    """The local folder of a hub dataset (downloaded once into the hub cache)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=hub_id, repo_type="dataset",
                                      allow_patterns=[f"*{s}" for s in FILE_SUFFIXES]))
    except Exception as e:  # noqa: BLE001 - offline, missing repo, auth: all become one line
        reason = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"could not get the {task} data set {hub_id} from the hub "
                        f"({type(e).__name__}{': ' + reason[:120] if reason else ''}); "
                        f"{local_hint(task, columns)}") from None


def hub_rows(hub_id: str, columns: Sequence[str], task: str) -> list[dict]:
    return read_rows(download(hub_id, task, columns), columns, task)


def write_jsonl(path: str | Path, rows: Iterator[dict] | Sequence[dict]) -> Path:
    """Write rows as JSONL (how tests make fixtures and how a user can save a hub set for offline use)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
