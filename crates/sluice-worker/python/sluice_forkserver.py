"""A warm interpreter that forks one child per python action: python3 -c
'import sluice_forkserver; sluice_forkserver.main(SOCKET)'.

It imports Sluice's wrapper and st2common once, then listens on the Unix socket SOCKET. A
worker connects once per execution and sends one JSON line — the action file, its
directory, the working directory, the whole environment and the process limits — and,
with it, three pipe ends (SCM_RIGHTS): the child's stdin, stdout and stderr. The server
forks; the child makes itself a process group of its own, takes those as its standard
streams, its environment and limits, and runs the wrapper as `python3 WRAPPER FILE`
would. The server answers {"pid": N} at once and {"exit": CODE} when the child ends
(CODE negative for a signal). The action's own modules are imported by the child only, so
no execution sees another's. The server ends within a second of its worker's end, however
the worker ended.
"""

import json
import os
import resource
import selectors
import signal
import socket
import sys
import traceback

import sluice_python_action
from st2common.runners.base_action import Action  # noqa: F401 - imported once, here

LIMITS = {"AS": resource.RLIMIT_AS, "CPU": resource.RLIMIT_CPU, "NOFILE": resource.RLIMIT_NOFILE}


def child(request, streams, closing):
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setpgid(0, 0)
        for fd in closing:
            os.close(fd)
        for target, fd in enumerate(streams):
            os.dup2(fd, target)
        for fd in streams:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for name, value in request.get("limits", []):
            resource.setrlimit(LIMITS[name], (value, value))
        sys.path.insert(0, request["actions_dir"])
        sys.argv = [sluice_python_action.__file__, request["action"]]
        try:
            sluice_python_action.main()
            code = 0
        except SystemExit as end:
            code = end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main(path):
    # The worker that started it; when it is gone (killed, even), so is the server.
    worker = os.getppid()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(128)
    # Connections are taken from now on: the worker waits for this file, not the socket's,
    # which exists from bind() on.
    open(path + ".ready", "w").close()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    pending = {}
    children = {}

    def answer(connection, message):
        try:
            connection.sendall(json.dumps(message).encode("utf-8") + b"\n")
        except OSError:
            pass

    def reap():
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            connection = children.pop(pid, None)
            if connection is not None:
                answer(connection, {"exit": os.waitstatus_to_exitcode(status)})
                connection.close()

    while True:
        if os.getppid() != worker:
            sys.exit(0)
        for key, _ in selector.select(timeout=1.0):
            if key.fileobj is server:
                connection, _ = server.accept()
                pending[connection.fileno()] = (connection, b"", None)
                selector.register(connection, selectors.EVENT_READ)
            elif key.fileobj == wake_read:
                try:
                    os.read(wake_read, 4096)
                except BlockingIOError:
                    pass
                reap()
            else:
                connection, buffer, streams = pending[key.fileobj.fileno()]
                if streams is None:
                    data, streams, _, _ = socket.recv_fds(connection, 1 << 20, 3)
                else:
                    data = connection.recv(1 << 20)
                if not data:
                    selector.unregister(connection)
                    del pending[connection.fileno()]
                    connection.close()
                    for fd in streams or []:
                        os.close(fd)
                    continue
                buffer += data
                if b"\n" not in buffer:
                    pending[connection.fileno()] = (connection, buffer, streams)
                    continue
                selector.unregister(connection)
                del pending[connection.fileno()]
                try:
                    request = json.loads(buffer.split(b"\n", 1)[0])
                    if len(streams) != 3:
                        raise ValueError("three streams are needed, %d came" % len(streams))
                except ValueError as error:
                    answer(connection, {"error": "unreadable request: %s" % error})
                    connection.close()
                    for fd in streams:
                        os.close(fd)
                    continue
                closing = [server.fileno(), wake_read, wake_write, connection.fileno()]
                closing += [c.fileno() for c, _, _ in pending.values()]
                # Another execution's pipe ends, held here while its request is read, must
                # not be held by this child too: that execution would never see its EOF.
                closing += [fd for _, _, fds in pending.values() for fd in fds or []]
                closing += [c.fileno() for c in children.values()]
                pid = os.fork()
                if pid == 0:
                    child(request, streams, closing)
                for fd in streams:
                    os.close(fd)
                children[pid] = connection
                answer(connection, {"pid": pid})
        reap()


if __name__ == "__main__":
    main(sys.argv[1])
