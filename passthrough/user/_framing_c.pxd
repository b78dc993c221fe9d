# Types for compiling _framing_py.py (through the symlink _framing_c.py) in Cython's
# pure-Python mode, as virtio/queue/_ring_c.pxd types the ring. The module's classes stay
# Python classes (tests and callers construct and subclass them); what is typed here are
# the constants the per-message path tests on every receive.
import cython

cdef Py_ssize_t _FD_SIZE
cdef long _MSG_CTRUNC
cdef long _MSG_CMSG_CLOEXEC
