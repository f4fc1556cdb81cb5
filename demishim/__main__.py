"""The demishim launcher: ``python -m demishim [--libos NAME] [--strict] [--stats] (script |
-m module | -c code) [args...]``.

1. Parse the launcher's own options (everything before the program).
2. ``shim.install()``: start the library OS (``--libos``, else ``$DEMI_LIBOS``, else posix)
   and patch the stdlib in place, before the program imports anything.
3. Run the program as ``__main__`` in a fresh module, with ``sys.argv`` and ``sys.path[0]`` as
   plain Python sets them (the script's real directory; the cwd for ``-m``; ``''`` for ``-c``).

Exit codes, tracebacks and Ctrl-C are the interpreter's own: exceptions propagate out of
the launcher, and a ``sys.excepthook`` wrapper drops the launcher's frames from the printed
traceback, so it reads as under plain Python (an uncaught KeyboardInterrupt still ends the
process by SIGINT, exit status 130 in a shell). ``--stats`` prints its counters at exit
(after the program's own ``atexit`` handlers) on stderr.

Like gevent's ``python -m gevent.monkey``, running this file as ``__main__`` aliases it as
``demishim.__main__`` so an import of that name does not run the launcher a second time.
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn

if __name__ == "__main__":
    sys.modules.setdefault("demishim.__main__", sys.modules["__main__"])

USAGE = """\
usage: python -m demishim [--libos NAME] [--strict] [--stats]
                          (script.py | -m module | -c code) [args...]

Runs a Python program with its sockets, select/poll/selectors and open() of regular files
going through a queue library OS (queueapi).

options:
  --libos NAME  the library OS: posix, shm, inet, uring or a Demikernel alias
                (default: $DEMI_LIBOS, else posix)
  --strict      make every fallback to the kernel an error naming the call
  --stats       print at exit how many sockets and files went through the library OS
                and how many fell back to the kernel
  -m module     run a library module as a script (like python -m)
  -c code       run a program passed as a string (like python -c)
  -h, --help    show this help and exit
"""

_THIS_FILE = os.path.abspath(__file__)


class _Options:
    libos: str | None = None
    strict = False
    stats = False
    mode = ""          # "script", "module" or "code"
    target = ""
    args: list[str] = []


def _usage_error(msg: str) -> NoReturn:
    sys.stderr.write(f"demishim: {msg}\n{USAGE}")
    raise SystemExit(2)


def parse_args(argv: list[str]) -> _Options:
    o = _Options()
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--libos":
            if i + 1 >= len(argv):
                _usage_error("--libos needs a name")
            o.libos = argv[i + 1]
            i += 2
            continue
        if a.startswith("--libos="):
            o.libos = a.split("=", 1)[1]
        elif a == "--strict":
            o.strict = True
        elif a == "--stats":
            o.stats = True
        elif a in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        elif a in ("-m", "-c") or a.startswith(("-m", "-c")) and not a.startswith("--"):
            o.mode = "module" if a[1] == "m" else "code"
            if len(a) > 2:
                o.target, o.args = a[2:], argv[i + 1:]
            elif i + 1 < len(argv):
                o.target, o.args = argv[i + 1], argv[i + 2:]
            else:
                _usage_error(f"argument expected for the {a} option")
            return o
        elif a == "--":
            if i + 1 >= len(argv):
                _usage_error("a script, -m module or -c code is needed")
            o.mode, o.target, o.args = "script", argv[i + 1], argv[i + 2:]
            return o
        elif a.startswith("-") and a != "-":
            _usage_error(f"unknown option {a}")
        else:
            o.mode, o.target, o.args = "script", a, argv[i + 1:]
            return o
        i += 1
    _usage_error("a script, -m module or -c code is needed")


def _strip_launcher_frames(tb: "object") -> "object":
    """The traceback from the first frame after the launcher's own (keeping runpy's frames
    that ``python -m`` shows too)."""
    cut = None
    t = tb
    while t is not None:
        filename = t.tb_frame.f_code.co_filename  # type: ignore[attr-defined]
        if os.path.abspath(filename) == _THIS_FILE:
            cut = t
        t = t.tb_next  # type: ignore[attr-defined]
    if cut is None or cut.tb_next is None:  # type: ignore[attr-defined]
        return tb  # the launcher itself failed: show everything
    return cut.tb_next  # type: ignore[attr-defined]


def _install_excepthook() -> None:
    previous = sys.excepthook

    def excepthook(tp: type, value: BaseException, tb: object) -> None:
        tb = _strip_launcher_frames(tb)
        if value is not None and value.__traceback__ is not None:
            value.__traceback__ = tb  # type: ignore[assignment]
        previous(tp, value, tb)

    sys.excepthook = excepthook


def _fresh_main(**attrs: object) -> dict:
    import types
    import builtins
    mod = types.ModuleType("__main__")
    d = mod.__dict__
    d["__builtins__"] = builtins
    d["__annotations__"] = {}
    d.update(attrs)
    sys.modules["__main__"] = mod
    return d


def _run(o: _Options) -> None:
    if o.mode == "code":
        import _frozen_importlib  # type: ignore[import-not-found]
        sys.argv[:] = ["-c"] + o.args
        sys.path[0] = ""
        d = _fresh_main(__loader__=_frozen_importlib.BuiltinImporter, __spec__=None,
                        __package__=None)
        code = compile(o.target, "<string>", "exec", dont_inherit=True)
        exec(code, d)
        return
    if o.mode == "module":
        import runpy
        sys.argv[:] = ["-m"] + o.args
        sys.path[0] = os.getcwd()
        _fresh_main(__loader__=None, __spec__=None, __package__=None)
        runpy._run_module_as_main(o.target, alter_argv=True)  # type: ignore[attr-defined]
        return
    path = o.target
    if os.path.isdir(path) or _is_zip(path):  # a directory or zip with __main__.py
        import runpy
        sys.argv[:] = [path] + o.args
        sys.path[0] = path
        _fresh_main(__loader__=None, __spec__=None, __package__=None)
        runpy._run_module_as_main("__main__", alter_argv=False)  # type: ignore[attr-defined]
        return
    from importlib.machinery import SourceFileLoader

    from shim import _orig
    abspath = os.path.abspath(path)
    try:
        with _orig.io_open(abspath, "rb") as f:  # not the program's open(): not counted
            source = f.read()
    except OSError as e:
        sys.stderr.write(f"{sys.executable}: can't open file {abspath!r}: "
                         f"[Errno {e.errno}] {e.strerror}\n")
        raise SystemExit(2)
    sys.argv[:] = [path] + o.args
    sys.path[0] = os.path.dirname(os.path.realpath(path))
    d = _fresh_main(__file__=abspath, __cached__=None, __spec__=None, __package__=None,
                    __loader__=SourceFileLoader("__main__", abspath))
    code = compile(source, abspath, "exec", dont_inherit=True)
    exec(code, d)


def _is_zip(path: str) -> bool:
    if not os.path.isfile(path) or path.endswith(".py"):
        return False
    import zipfile
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Parse, install the shim, run the program. Returns 0 when the program ends normally;
    exceptions and SystemExit of the program propagate (the interpreter reports them)."""
    o = parse_args(list(sys.argv[1:] if argv is None else argv))
    import shim
    try:
        rt = shim.install(o.libos, strict=o.strict)
    except (OSError, ValueError) as e:
        sys.stderr.write(f"demishim: cannot start the library OS: {e}\n")
        raise SystemExit(2)
    rt.count_queues = o.stats  # closed queues' counters are only read by --stats
    if o.stats:
        import atexit

        def print_stats() -> None:
            try:
                sys.stdout.flush()
            except Exception:
                pass
            sys.stderr.write(rt.report() + "\n")
            sys.stderr.flush()
        atexit.register(print_stats)
    _install_excepthook()
    _run(o)
    return 0


if __name__ == "__main__":
    sys.exit(main())
