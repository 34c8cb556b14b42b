"""The program a slot's Python session runs *inside* the sandbox (`python -c <this file>`).

It must run on any Python 3.8+ an image brings and import nothing of this project. Protocol:
one JSON request per line on stdin (`{"code": str, "cap": int}`), one JSON reply per line on
the stdout it had at start; the code's own stdout and stderr (prints and child processes
alike) go to two files in the slot's private /tmp, read back after each call, at most `cap`
bytes each. Variables live in one namespace for the session's life. An exception in the code
is a reply with its traceback; SystemExit is too (the session stays).
"""

import ast
import builtins
import fcntl
import json
import os
import sys
import tempfile
import traceback


def _capture_file(name):
    fd, path = tempfile.mkstemp(prefix=".python-session-" + name + "-")
    os.unlink(path)
    # Append mode: after a truncate, every writer (children too) starts at offset 0 again.
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    return fd


def _read_back(fd, cap):
    size = os.fstat(fd).st_size
    data = os.pread(fd, cap, 0)
    text = data.decode("utf-8", "replace")
    if size > len(data):
        text += "\n[output truncated: showing %d of %d bytes]" % (len(data), size)
    return text


def _traceback(exc):
    tb = exc.__traceback__
    # Drop this driver's own frame: the model should see only its code.
    while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _run(code, namespace):
    tree = ast.parse(code, "<python>", "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<python>", "exec"), namespace)
    if last is not None:
        value = eval(compile(last, "<python>", "eval"), namespace)
        if value is not None:
            return repr(value)
    return None


def main():
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    out, err = _capture_file("out"), _capture_file("err")
    os.dup2(out, 1)
    os.dup2(err, 2)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    for line in requests:
        request = json.loads(line)
        cap = int(request.get("cap", 65536))
        for fd in (out, err):
            os.ftruncate(fd, 0)
        result = error = None
        try:
            result = _run(request["code"], namespace)
        except SystemExit as exc:
            error = "SystemExit: %r (the session keeps running)" % (exc.code,)
        except BaseException as exc:  # the model's code: report it, keep the session
            error = _traceback(exc)
        sys.stdout.flush()
        sys.stderr.flush()
        reply = {"stdout": _read_back(out, cap), "stderr": _read_back(err, cap),
                 "result": None if result is None else result[:cap],
                 "error": None if error is None else error[-cap:]}
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()


main()
