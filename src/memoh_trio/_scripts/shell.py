"""How the scripts are written: quoting, the fixed command that runs a script sent as stdin,
entering the destination directory, and the shell functions every per-entry script starts with.
"""

from __future__ import annotations

import shlex

#: The fixed command that runs a generated script sent as stdin.
RUN_STDIN = "exec sh -s"


def quote(s: str) -> str:
    """``s`` as one shell word."""
    return shlex.quote(s)


#: Exit status of a command whose shell could not enter the destination directory.
CD_FAILED_EXIT = 96


def in_dir(dest: str, command: str) -> str:
    """``command`` run in the destination directory ``dest`` (relative to the server's working
    directory; "" = that directory itself).

    The script enters it with ``cd`` rather than through Exec's ``work_dir``: Memoh's server
    takes a relative ``work_dir`` from its own process's working directory, not from its data
    directory, so ``work_dir="sub"`` fails there (``chdir sub: no such file or directory``).
    """
    if not dest:
        return command
    return f"cd -- {quote('./' + dest)} || exit {CD_FAILED_EXIT}\n{command}"


def shell_path(rel: str) -> str:
    """A relative path as a shell word that can never be read as an option."""
    return quote("./" + rel)


def with_python(command: str, exe: str) -> str:
    """``command`` (``python3 ...``) run by the interpreter ``exe`` (from the probe)."""
    if exe == "python3" or not command.startswith("python3 "):
        return command
    return quote(exe) + command[len("python3"):]


#: Shell functions shared by the generated scripts (POSIX sh; builtins only, no fork).
#: ``memoh_dir REL``: REL is a real directory reached through real directories (missing ones are
#: created, one ``mkdir`` each, never ``-p``); ``memoh_safe REL``: REL exists and no component of
#: it is a symlink. Both set ``_why`` when they fail.
PRELUDE = r"""memoh_dir() {
  _p=.; _r=$1
  while [ -n "$_r" ]; do
    _c=${_r%%/*}
    case $_r in */*) _r=${_r#*/} ;; *) _r= ;; esac
    case $_c in ''|.) continue ;; esac
    _p=$_p/$_c
    if [ -L "$_p" ]; then _why="a symlink is in the way"; return 1; fi
    if [ ! -d "$_p" ]; then
      if [ -e "$_p" ]; then _why="not a directory on the way"; return 1; fi
      _why="cannot create a directory on the way"
      # another step may have created it meanwhile: fine if it is a real directory
      mkdir -- "$_p" 2>/dev/null || { [ -d "$_p" ] && [ ! -L "$_p" ]; } || return 1
    fi
  done
  return 0
}
memoh_safe() {
  _p=.; _r=$1
  while [ -n "$_r" ]; do
    _c=${_r%%/*}
    case $_r in */*) _r=${_r#*/} ;; *) _r= ;; esac
    case $_c in ''|.) continue ;; esac
    _p=$_p/$_c
    if [ -L "$_p" ]; then _why="a symlink is in the way"; return 1; fi
  done
  [ -e "$_p" ] || { _why="missing in the container"; return 1; }
}
"""
