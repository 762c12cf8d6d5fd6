"""Operations that change the tree besides uploads: Mkdir, DeleteFile, Rename.

The final component of a path acted on here is never followed: a symlink is deleted or renamed
itself, never its target (:func:`.resolve.resolve`, mode ``"parent"``).
"""

from __future__ import annotations

import os
import shutil
import stat as stat_mod

from .resolve import require_path, resolve, with_path


def mkdir(root_fd: int, path: str) -> None:
    """``mkdir -p`` (existing directories are fine)."""
    require_path(path)
    resolve(root_fd, path, mode="dir", create=True, allow_root=True).close()


def delete(root_fd: int, path: str, recursive: bool = False) -> None:
    """Remove a file, symlink (not its target) or empty directory; ``recursive`` removes trees.
    A missing path is a success."""
    try:
        res = resolve(root_fd, path, mode="parent", allow_root=False)
    except FileNotFoundError:
        return
    with res:
        assert res.name is not None
        name = res.name
        try:
            st = os.stat(name, dir_fd=res.dir_fd, follow_symlinks=False)
            if not stat_mod.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=res.dir_fd)
            elif recursive:
                # fd-based and symlink-safe on Linux (shutil.rmtree.avoids_symlink_attacks).
                shutil.rmtree(name, dir_fd=res.dir_fd)
            else:
                os.rmdir(name, dir_fd=res.dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise with_path(exc, path) from exc


def rename(root_fd: int, old_path: str, new_path: str) -> None:
    """Rename an entry (a symlink is renamed, not followed); the target's parents are created."""
    with resolve(root_fd, old_path, mode="parent", allow_root=False) as src:
        assert src.name is not None
        try:
            os.stat(src.name, dir_fd=src.dir_fd, follow_symlinks=False)
        except OSError as exc:
            raise with_path(exc, old_path) from exc
        with resolve(root_fd, new_path, mode="parent", create=True, allow_root=False) as dst:
            assert dst.name is not None
            try:
                os.rename(src.name, dst.name, src_dir_fd=src.dir_fd, dst_dir_fd=dst.dir_fd)
            except OSError as exc:
                raise with_path(exc, f"{old_path} -> {new_path}") from exc
