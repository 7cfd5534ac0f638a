"""A full disk is a clean StorageFullError: nothing acknowledged is lost, writes work once space is freed.

The scenario runs in a child process on a small tmpfs of its own (a private
mount namespace via ``unshare``, so nothing is mounted on the machine; as root,
or as a user where user namespaces are allowed). Where no tmpfs can be mounted
it runs under a file-size limit (``RLIMIT_FSIZE``) instead, which fails writes
the same way (``EFBIG``) with a per-file bound.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = textwrap.dedent(
    """
    import json, os, resource, signal, subprocess, sys, pathlib, torch
    from metaembed.errors import StorageFullError
    from metaembed.index import MultiVectorIndex

    folder, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
    if mode == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)], check=True)
        filler = folder / "filler"
        filler.write_bytes(b"x" * (512 << 10))  # space to free later
    else:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (600 << 10, 600 << 10))
        filler = None
    path = folder / "idx"

    def vectors(n, seed):
        v = torch.randn(n, 8, 64, generator=torch.Generator().manual_seed(seed))
        return v / v.norm(dim=-1, keepdim=True)

    index = MultiVectorIndex.create(path, dim=64, num_vectors=8, dtype="float32", metadata={"v": 1})
    acknowledged, errors, step = [], [], 0
    while len(errors) < 3 and step < 400:
        ids = [f"s{step}-{j}" for j in range(13 + step % 17)]
        index.metadata["last"] = step  # committed with the add, or not at all
        try:
            index.add(ids, vectors(len(ids), step))
            acknowledged += ids
        except StorageFullError as error:
            errors.append(str(error))
        step += 1
    deleted = acknowledged[:5]
    expected_last = max(int(i[1:].split("-")[0]) for i in acknowledged)
    try:
        index.delete(deleted)  # commits the in-place metadata change too
        acknowledged = acknowledged[5:]
        expected_last = step - 1
    except StorageFullError as error:
        errors.append("delete: " + str(error))
    in_memory = sorted(index.ids)
    index.close()
    leftovers = sorted(p.name for p in path.iterdir() if p.suffix in (".tmp", ".stmp"))
    with MultiVectorIndex.open(path) as index:
        reopened = sorted(index.ids)
        stored_ok = bool(torch.equal(index.vectors(acknowledged[-3:]),
                                     torch.cat([vectors(1 + int(i.split("-")[1]), int(i[1:].split("-")[0]))
                                                [int(i.split("-")[1]):][:1, :8] for i in acknowledged[-3:]])))
        last = index.metadata.get("last")
        if filler is not None:
            filler.unlink()
            more = [f"after-{j}" for j in range(20)]
        else:
            more = ["after-0"]  # a small write fits under the per-file limit again
        index.add(more, vectors(len(more), 999))
        after = len(index)
    checked = MultiVectorIndex.check(path)
    print(json.dumps({
        "errors": errors, "acknowledged": sorted(acknowledged), "in_memory": in_memory, "reopened": reopened,
        "leftovers": leftovers, "stored_ok": stored_ok, "after": after, "more": len(more), "last": last,
        "expected_last": expected_last, "damage": [str(d) for d in checked],
    }))
    """
)


def _runner(folder: Path) -> tuple[list[str], str] | None:
    """How to run the scenario here: a private tmpfs when one can be mounted, else a file-size limit."""
    unshare = shutil.which("unshare")
    if unshare and shutil.which("mount"):
        for flags in (["--mount", "--propagation", "private"], ["--mount", "--map-root-user", "--propagation", "private"]):
            probe = subprocess.run([unshare, *flags, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                                   capture_output=True)
            if probe.returncode == 0:
                return [unshare, *flags], "tmpfs"
    if hasattr(os, "setrlimit") or sys.platform.startswith("linux"):
        return [], "rlimit"
    return None


def test_a_full_disk_is_a_clean_error_and_nothing_acknowledged_is_lost(tmp_path) -> None:
    folder = tmp_path / "disk"
    folder.mkdir()
    runner = _runner(folder)
    if runner is None:
        pytest.skip("neither a tmpfs (unshare + mount) nor RLIMIT_FSIZE is available here")
    prefix, mode = runner
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([*prefix, sys.executable, "-c", SCENARIO, str(folder), mode], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().split("\n")[-1])
    assert len(result["errors"]) >= 3, result["errors"]  # the disk did fill, several times
    assert all("no space left" in e and "last committed state" in e for e in result["errors"]), result["errors"]
    # what the writer acknowledged is exactly what is there, in memory and after reopening
    assert result["in_memory"] == result["acknowledged"] == result["reopened"]
    assert result["stored_ok"] and result["leftovers"] == [] and result["damage"] == []
    assert result["last"] == result["expected_last"]  # metadata committed with the write that follows it
    assert result["after"] == len(result["acknowledged"]) + result["more"]  # writes work again
