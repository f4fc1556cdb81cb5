"""setuptools entry for the C parts (built at install time); metadata is in pyproject.toml.

- libos.shm._ring: the shared-memory ring (libos/shm/ring.c), through cffi in API mode.
- libos.inet._csum: the Internet checksum of the inet stack's fast paths (cffi, API mode;
  pure Python is used when it is not built).
- queueapi._fast: the data path of the core (tokens, results, shm lanes) as a CPython
  extension, because its job is creating Python objects cheaply, which cffi cannot do.
- shim._speedups: the shim's hot socket methods (recv, recv_into, send, sendall) and its
  poll loop, for the same reason; the shim runs without it (DEMISHIM_NO_C=1 turns it off).
- libos.inet._tcpfast: TcpConnection.fast_input and poll_data of the inet stack (header
  prediction and the one-segment send), reading and writing the connection's slots in place;
  the Python methods run without it (DEMI_INET_NO_C=1 turns it off).
- apps._resp: the Redis apps' parser of plain multibulk requests, their costliest step in
  Python (~27k instructions per request); apps.resp runs without it (APPS_NO_C=1).
"""
from setuptools import Extension, setup

C_FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
           "-Wno-missing-field-initializers", "-Wno-cast-function-type"]

setup(
    cffi_modules=["libos/shm/_ring_build.py:ffibuilder", "libos/inet/_csum_build.py:ffibuilder"],
    ext_modules=[Extension("queueapi._fast", ["queueapi/_fast.c"], extra_compile_args=C_FLAGS),
                 Extension("shim._speedups", ["shim/_speedups.c"], extra_compile_args=C_FLAGS),
                 Extension("libos.inet._tcpfast", ["libos/inet/_tcpfast.c"], extra_compile_args=C_FLAGS),
                 Extension("apps._resp", ["apps/_resp.c"], extra_compile_args=C_FLAGS)],
)
