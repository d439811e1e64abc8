"""Moving a DVC stage between workspaces (clones on different machines) through the DVC remote.

The protocol: the workspace that ran the upstream stages pushes their outputs (:func:`push`) and
hands their ``dvc.lock`` entries (:func:`lock_entries`) to a worker; the worker checks out the same
commit, writes those entries into its own ``dvc.lock``, pulls exactly those outputs, runs the one
stage, pushes its outputs and hands back the stage's ``dvc.lock`` entry (:func:`run_stage_here`);
the first workspace writes that entry and pulls the outputs (:func:`receive`), after which DVC sees
the stage as up to date there. Outputs declared ``cache: false`` (metrics, plots) travel too, as
objects in the remote named by the md5 their entry records.

The default remote is a folder beside the clone (``.dvc/config``); S3, GCS and the other DVC remotes
work the same once the remote's url is changed (docs/remote.md).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from moalign.data.schema import atomic_write_text

__all__ = [
    "WorkspaceError",
    "apply_lock_entries",
    "lock_entries",
    "push",
    "receive",
    "remote_url",
    "run_stage_here",
    "stage_env",
    "upstream_stages",
]

_logger = logging.getLogger(__name__)

TAIL_LINES = 40
LOCK_FILE = "dvc.lock"
LOCK_SCHEMA = "2.0"


class WorkspaceError(RuntimeError):
    """A ``dvc`` or ``git`` command exited non-zero; the message has the command and its output tail."""

    def __init__(self, command: str, returncode: int, tail: str) -> None:
        super().__init__(f"`{command}` failed (exit code {returncode}); last output lines:\n{tail}")
        self.command = command
        self.returncode = returncode
        self.tail = tail

    def __reduce__(self):  # picklable, for Prefect's task states
        return (type(self), (self.command, self.returncode, self.tail))


def stage_env() -> dict[str, str]:
    """The environment for ``dvc`` and the stage commands it runs: this interpreter's ``python`` first."""
    env = dict(os.environ)
    # Stage commands say `python ...`: make that this interpreter (the project venv) even when the
    # venv is not activated, e.g. under a Prefect process worker.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env["PATH"]]) if env.get("PATH") else bin_dir
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def _run(args: Sequence[str], root: Path, shown: str | None = None) -> str:
    """Run ``args`` in ``root``; its combined output, or :class:`WorkspaceError` with the tail."""
    shown = shown or " ".join(args)
    _logger.info("$ %s  (in %s)", shown, root)
    result = subprocess.run(
        list(args), cwd=root, env=stage_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", check=False,
    )
    if result.returncode != 0:
        # progress bars rewrite one line with \r: keep each line's last state
        lines = (line.rsplit("\r", 1)[-1].rstrip() for line in result.stdout.splitlines())
        tail = deque((line for line in lines if line), maxlen=TAIL_LINES)
        raise WorkspaceError(shown, result.returncode, "\n".join(tail))
    return result.stdout


def _dvc(root: Path, *args: str) -> str:
    return _run([sys.executable, "-m", "dvc", *args], root, shown=" ".join(["dvc", *args]))


# --------------------------------------------------------------------------------------------------
# dvc.lock entries
# --------------------------------------------------------------------------------------------------


def _read_lock(root: Path) -> dict[str, Any]:
    # DVC reads and writes dvc.lock as YAML 1.2 (ruamel); PyYAML (1.1) would read `5e-07` as a string
    from ruamel.yaml import YAML

    path = root / LOCK_FILE
    if not path.is_file():
        return {}
    data = YAML(typ="safe").load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
        raise ValueError(f"{path}: not a DVC lock file (no 'stages' mapping)")
    if data.get("schema", LOCK_SCHEMA) != LOCK_SCHEMA:
        raise ValueError(f"{path}: schema {data.get('schema')!r}, expected {LOCK_SCHEMA!r} (DVC 2 or later)")
    return data


def lock_entries(root: str | os.PathLike[str], stages: Iterable[str]) -> dict[str, dict]:
    """The ``dvc.lock`` entries of ``stages`` in ``root``; ValueError naming a stage that has none."""
    path = Path(root) / LOCK_FILE
    recorded = _read_lock(Path(root)).get("stages") or {}
    missing = [name for name in stages if name not in recorded]
    if missing:
        raise ValueError(
            f"{path} has no entry for stage(s) {', '.join(missing)}: run them first "
            f"(dvc repro {' '.join(missing)})"
        )
    return {name: recorded[name] for name in stages}


def apply_lock_entries(root: str | os.PathLike[str], entries: Mapping[str, Mapping]) -> None:
    """Write ``entries`` into ``root``'s ``dvc.lock``, keeping the other stages' entries.

    Through a temporary file and a rename, so a crash leaves the old file or the new one."""
    from ruamel.yaml import YAML

    data = _read_lock(Path(root))
    stages = dict(data.get("stages") or {})
    stages.update({name: dict(entry) for name, entry in entries.items()})
    # DVC's own layout (dvc.utils.serialize): block style, schema first
    writer = YAML()
    writer.default_flow_style = False
    text = io.StringIO()
    writer.dump({"schema": LOCK_SCHEMA, "stages": stages}, text)
    atomic_write_text(Path(root) / LOCK_FILE, text.getvalue())


# --------------------------------------------------------------------------------------------------
# The pipeline graph (DVC's own)
# --------------------------------------------------------------------------------------------------


def _pipeline_stages(repo: Any, root: Path) -> dict[str, Any]:
    """The stages of ``root``'s ``dvc.yaml`` by name (the ones with ``dvc.lock`` entries)."""
    from dvc.stage import PipelineStage

    pipeline = root / "dvc.yaml"
    return {s.name: s for s in repo.index.stages if isinstance(s, PipelineStage) and Path(s.path) == pipeline}


def _upstream(repo: Any, root: Path, stage: str) -> tuple[list[str], list[str]]:
    """The pipeline stages and the ``.dvc`` files ``stage`` depends on, transitively, in file order."""
    import networkx as nx
    from dvc.stage import PipelineStage

    index = repo.index
    pipeline = root / "dvc.yaml"
    named = _pipeline_stages(repo, root)
    if stage not in named:
        raise ValueError(f"{pipeline} has no stage {stage!r}; it has: {', '.join(named)}")
    # edges point from a stage to the stages whose outputs it reads
    above = nx.descendants(index.graph, named[stage])
    stages: list[str] = []
    files: list[str] = []
    for candidate in index.stages:
        if candidate not in above:
            continue
        if not isinstance(candidate, PipelineStage):  # `dvc add` / `dvc import` files: no dvc.lock entry
            files.append(Path(candidate.path).relative_to(root).as_posix())
        elif Path(candidate.path) == pipeline:
            stages.append(candidate.name)
        else:
            raise ValueError(f"{stage!r} depends on {candidate.addressing!r}: only {pipeline}'s stages are handed over")
    return stages, files


def _open_repo(root: Path) -> Any:
    from dvc.repo import Repo

    return Repo(str(root))


def upstream_stages(root: str | os.PathLike[str], stage: str) -> list[str]:
    """Every ``dvc.yaml`` stage whose outputs ``stage`` reads, transitively, in ``dvc.yaml`` order.

    ``.dvc`` files (``data.dvc``) are not listed: they have no ``dvc.lock`` entry, the commit
    carries them, and :func:`run_stage_here` pulls those ``stage`` depends on by itself."""
    root = Path(root).resolve()
    with _open_repo(root) as repo:
        return _upstream(repo, root, stage)[0]


# --------------------------------------------------------------------------------------------------
# Outputs through the remote
# --------------------------------------------------------------------------------------------------


def _md5(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def _uncached_outputs(repo: Any, root: Path, stages: Iterable[str]) -> list[tuple[str, Path, str]]:
    """``(stage, path, md5 in dvc.lock)`` of each ``cache: false`` output of ``stages``.

    ``dvc push`` and ``dvc pull`` leave these out (DVC expects them in git), so they travel as
    remote objects named by their md5."""
    defined = _pipeline_stages(repo, root)
    recorded = lock_entries(root, [name for name in defined if name in set(stages)])
    found = []
    for stage in (defined[name] for name in recorded):
        hashes = {str(out.get("path")): out.get("md5") for out in recorded[stage.name].get("outs") or []}
        for out in stage.outs:
            if out.use_cache:
                continue
            md5 = hashes.get(out.def_path)
            if not md5:
                raise ValueError(f"{root / LOCK_FILE}: stage {stage.name!r} records no md5 for {out.def_path}")
            if str(md5).endswith(".dir"):
                raise ValueError(f"stage {stage.name!r}: {out.def_path} is a directory with cache: false; "
                                 "only single files can travel uncached")
            found.append((stage.name, Path(out.fs_path), str(md5)))
    return found


def _push_uncached(repo: Any, root: Path, stages: Iterable[str], strict: bool) -> None:
    """Upload the uncached outputs; one that differs from its record fails when ``strict``, else
    stays behind with a warning (a stale stage, nobody can take it as up to date)."""
    from dvc_objects.fs import localfs

    outputs = _uncached_outputs(repo, root, stages)
    if not outputs:
        return
    remote = repo.cloud.get_remote_odb(None, "push")
    for stage, path, md5 in outputs:
        if not path.is_file() or _md5(path) != md5:
            problem = (f"{path} is not what {root / LOCK_FILE} records for stage {stage!r} (md5 {md5}): "
                       f"run `dvc repro {stage}` before pushing it")
            if strict:
                raise ValueError(problem)
            _logger.warning("not pushed: %s", problem)
            continue
        remote.add(str(path), localfs, md5)


def _pull_uncached(repo: Any, root: Path, stages: Iterable[str]) -> None:
    outputs = _uncached_outputs(repo, root, stages)
    if not outputs:
        return
    remote = repo.cloud.get_remote_odb(None, "pull")
    for stage, path, md5 in outputs:
        if path.is_file() and _md5(path) == md5:
            continue
        if not remote.exists(md5):
            raise FileNotFoundError(f"{path.relative_to(root)} of stage {stage!r} (md5 {md5}) is not in the "
                                    "remote: push it from the workspace that ran the stage")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.download")  # renamed into place once checked
        try:
            remote.fs.get_file(remote.oid_to_path(md5), str(partial))
            if _md5(partial) != md5:
                raise ValueError(f"the remote's copy of {path.relative_to(root)} does not match md5 {md5}")
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)


def remote_url(root: str | os.PathLike[str]) -> str | None:
    """The url of ``root``'s default DVC remote as DVC reads it (a relative folder made absolute);
    None without a default remote."""
    with _open_repo(Path(root).resolve()) as repo:
        name = repo.config["core"].get("remote")
        return repo.config["remote"].get(name, {}).get("url") if name else None


def _use_remote(root: Path, url: str) -> None:
    """Point ``root``'s default remote at ``url`` in ``.dvc/config.local``, which git ignores."""
    name = "shared"
    with _open_repo(root) as repo:
        name = repo.config["core"].get("remote") or name
    _dvc(root, "remote", "add", "--local", "--force", "--default", name, url)


def push(root: str | os.PathLike[str], targets: Sequence[str] | None = None) -> None:
    """``dvc push`` (every output, or those of ``targets``) to the default remote, uncached ones too."""
    root = Path(root).resolve()
    _dvc(root, "push", *(targets or []))
    with _open_repo(root) as repo:
        names = targets or list(_read_lock(root).get("stages") or {})
        _push_uncached(repo, root, names, strict=bool(targets))


def _pull(root: Path, targets: Sequence[str]) -> None:
    if not targets:
        return
    _dvc(root, "pull", *targets)
    with _open_repo(root) as repo:
        _pull_uncached(repo, root, targets)


# --------------------------------------------------------------------------------------------------
# The two ends of a hand-off
# --------------------------------------------------------------------------------------------------


def _git(root: Path, *args: str) -> str:
    return _run(["git", *args], root).strip()


def _resolve_commit(root: Path, commit: str) -> str | None:
    result = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], cwd=root,
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def _check_out(root: Path, commit: str) -> None:
    """Detach ``root`` at ``commit``, fetching it from origin when missing. Refuses when a tracked
    file other than dvc.lock and the pipeline's outputs (DVC rewrites both) has changes."""
    sha = _resolve_commit(root, commit)
    if sha is None:
        _git(root, "fetch", "--quiet", "origin")
        sha = _resolve_commit(root, commit)
    if sha is None:
        # a commit no branch reaches (a pull request's) can still be fetched by name
        try:
            _git(root, "fetch", "--quiet", "origin", commit)
        except WorkspaceError:
            pass
        sha = _resolve_commit(root, commit)
    if sha is None:
        raise ValueError(f"{root}: commit {commit!r} not found, not even in origin")
    if _resolve_commit(root, "HEAD") == sha:
        return
    changed = [path for path in _git(root, "diff", "--name-only", "-z", "HEAD").split("\0") if path]
    with _open_repo(root) as repo:
        outputs = [Path(out.fs_path).relative_to(root).as_posix() for out in repo.index.outs]
    users = [path for path in changed if path != LOCK_FILE
             and not any(path == out or path.startswith(f"{out}/") for out in outputs)]
    if users:
        raise RuntimeError(f"{root} has uncommitted changes to {', '.join(users)}: commit or discard them "
                           f"before the worker checks out {sha[:12]}")
    # --force: dvc.lock and the outputs are DVC's to rewrite (the checks above guard the rest)
    _git(root, "checkout", "--quiet", "--force", "--detach", sha)


def run_stage_here(
    root: str | os.PathLike[str],
    stage: str,
    upstream: Mapping[str, Mapping],
    *,
    commit: str | None = None,
    remote_url: str | None = None,
) -> dict[str, dict]:
    """What a worker does: check out ``commit``, take the ``upstream`` stages' entries and pull their
    outputs, run ``stage`` alone, push its outputs; its ``dvc.lock`` entry, for :func:`receive`.

    ``--single-item``: a worker never redoes upstream work; outputs missing upstream fail the stage.
    ``remote_url`` (the sender's :func:`remote_url`) replaces the worker's default remote."""
    root = Path(root).resolve()
    if commit is not None:
        _check_out(root, commit)
    if remote_url is not None:
        _use_remote(root, remote_url)
    apply_lock_entries(root, upstream)
    with _open_repo(root) as repo:
        data_files = _upstream(repo, root, stage)[1]
    _pull(root, [*upstream, *data_files])
    output = _dvc(root, "repro", "--single-item", stage)
    _logger.info("%s", output.rstrip())
    push(root, [stage])
    return lock_entries(root, [stage])


def receive(root: str | os.PathLike[str], entries: Mapping[str, Mapping]) -> None:
    """Take stages run elsewhere: write their ``dvc.lock`` entries and pull their outputs."""
    root = Path(root).resolve()
    apply_lock_entries(root, entries)
    _pull(root, list(entries))
