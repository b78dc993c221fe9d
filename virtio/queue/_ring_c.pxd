# Types for compiling _ring_py.py (through the symlink _ring_c.py) in Cython's pure-Python
# mode, as aiohttp's reader_c.pxd types reader_py.py. The declarations give C types to the
# names the .py defines; the only code here is the compiled form of the memory primitives
# (cdef inline, below) and the fence they use.
import cython

cdef extern from *:
    """
    static CYTHON_INLINE void devmodels_ring_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
    """
    void _c_fence "devmodels_ring_fence"() noexcept nogil

cdef unsigned int RING_EVENT_FLAGS_DESC
cdef unsigned int RING_EVENT_FLAGS_DISABLE
cdef unsigned int RING_EVENT_FLAGS_ENABLE
cdef unsigned int VIRTQ_AVAIL_F_NO_INTERRUPT
cdef unsigned int VIRTQ_DESC_F_AVAIL
cdef unsigned int VIRTQ_DESC_F_INDIRECT
cdef unsigned int VIRTQ_DESC_F_NEXT
cdef unsigned int VIRTQ_DESC_F_USED
cdef unsigned int VIRTQ_DESC_F_WRITE
cdef unsigned long long VIRTQ_MAX_CHAIN_BYTES
cdef unsigned int VIRTQ_MAX_SIZE
cdef unsigned int VIRTQ_USED_F_NO_NOTIFY

cdef object _U16
cdef object _U32
cdef object _U64
cdef object _DESC
cdef object _SEG
cdef object _STAGE
cdef Py_ssize_t _SEG_SIZE
cdef unsigned long long _GENERATION

# The compiled memory primitives. _ring_py.py defines the interpreted ones under
# `if not cython.compiled`; the differential tests hold the two to the same results. Every
# offset is checked by the caller against the window it came from (_ring_py.py rule 3).

cdef inline const unsigned char *_rptr(const unsigned char[::1] view, Py_ssize_t off) noexcept:
    return &view[off]

cdef inline unsigned char *_wptr(unsigned char[::1] view, Py_ssize_t off) noexcept:
    return &view[off]

cdef inline unsigned short *_hptr(unsigned short[::1] view) noexcept:
    return &view[0]

cdef inline bytes _copy(const unsigned char *p, Py_ssize_t start, Py_ssize_t stop):
    return <bytes>(<const char *>p)[start:stop]

cdef inline unsigned int _ld16(const unsigned char *p, Py_ssize_t off) noexcept:
    return p[off] | (<unsigned int>p[off + 1] << 8)

cdef inline unsigned int _ld32(const unsigned char *p, Py_ssize_t off) noexcept:
    return _ld16(p, off) | (_ld16(p, off + 2) << 16)

cdef inline unsigned long long _ld64(const unsigned char *p, Py_ssize_t off) noexcept:
    return _ld32(p, off) | (<unsigned long long>_ld32(p, off + 4) << 32)

cdef inline (unsigned long long, unsigned int, unsigned int, unsigned int) _ld_desc(
        const unsigned char *p, Py_ssize_t off) noexcept:
    return _ld64(p, off), _ld32(p, off + 8), _ld16(p, off + 12), _ld16(p, off + 14)

cdef inline (unsigned int, unsigned int, unsigned int) _ld_stage(const unsigned char *p, Py_ssize_t off) noexcept:
    return _ld32(p, off), _ld32(p, off + 4), _ld32(p, off + 8)

cdef inline void _st16(unsigned char *p, Py_ssize_t off, unsigned int value) noexcept:
    p[off] = <unsigned char>value
    p[off + 1] = <unsigned char>(value >> 8)

cdef inline void _st32(unsigned char *p, Py_ssize_t off, unsigned int value) noexcept:
    _st16(p, off, value)
    _st16(p, off + 2, value >> 16)

cdef inline void _st_stage(unsigned char *p, Py_ssize_t off, unsigned int buffer_id, unsigned int length,
                           unsigned int complete) noexcept:
    _st32(p, off, buffer_id)
    _st32(p, off + 4, length)
    _st32(p, off + 8, complete)

cdef inline void _st_seg(unsigned char *p, Py_ssize_t off, unsigned long long gpa, unsigned int length) noexcept:
    _st32(p, off, <unsigned int>gpa)
    _st32(p, off + 4, <unsigned int>(gpa >> 32))
    _st32(p, off + 8, length)

cdef inline void _fence() noexcept:
    _c_fence()

cdef unsigned int _wrap16(unsigned int value) noexcept
cdef bint _avail(unsigned int flags, bint wrap) noexcept
@cython.locals(entry=object)
cdef object _entry(list used, Py_ssize_t i)


@cython.final
cdef class Chain:
    cdef readonly unsigned int head
    cdef readonly unsigned int n_desc
    cdef readonly unsigned int n_readable
    cdef readonly unsigned int n_writable
    cdef readonly unsigned long long readable_len
    cdef readonly unsigned long long writable_len
    cdef bytes _segs
    cdef unsigned int _pos
    cdef unsigned long long _generation

    @cython.locals(p="const unsigned char *", i=Py_ssize_t, out=list)
    cdef list _pairs(self, Py_ssize_t first, Py_ssize_t stop)


@cython.final
cdef class Ring:
    cdef public unsigned int max_size
    cdef public unsigned int max_segments
    cdef public bint packed
    cdef public unsigned long long generation
    cdef public unsigned int size
    cdef public unsigned long long desc_addr
    cdef public unsigned long long driver_addr
    cdef public unsigned long long device_addr
    cdef public bint ready
    cdef public bint event_idx
    cdef public bint in_order
    cdef public bint indirect
    cdef public bint notify
    cdef public unsigned int next_avail
    cdef public unsigned int next_used
    cdef public bint avail_wrap
    cdef public bint used_wrap
    cdef public unsigned int in_order_next
    cdef public object inflight
    cdef public unsigned int inflight_descs
    cdef public unsigned int inflight_ids
    cdef bytearray _mark
    cdef bytearray _scratch
    cdef const unsigned char[::1] _tview
    cdef unsigned long long _tbase
    cdef unsigned long long _tend
    cdef public object broken
    cdef public unsigned int signalled
    cdef unsigned int _nread
    cdef unsigned int _nwrite
    cdef unsigned long long _rlen
    cdef unsigned long long _wlen

    cpdef int reset(self) except -1
    cpdef int set_inflight(self, Py_ssize_t size, object pairs) except -1
    cpdef list pop(self, object memory, Py_ssize_t budget)
    cpdef object push(self, object memory, object used)
    cpdef object set_notification(self, object memory, bint enable)
    cpdef int mark_signalled(self) except -1
    cpdef object notification_owed(self, object memory)

    @cython.locals(
        dbuf=object, doff=Py_ssize_t, dview="const unsigned char[::1]", ring="const unsigned char *",
        abuf=object, aoff=Py_ssize_t, aview="const unsigned char[::1]", avail="const unsigned char *",
    )
    cpdef object has_available(self, object memory)

    @cython.locals(n=Py_ssize_t, i=Py_ssize_t, chain=Chain, first=Chain, item=object)
    cpdef object rewind(self, list chains)

    @cython.locals(
        size="unsigned int", dbuf=object, doff=Py_ssize_t, dview="const unsigned char[::1]",
        desc="const unsigned char *", sview="unsigned char[::1]", scratch="unsigned char *",
    )
    cpdef object reread_split(self, object memory, unsigned int head)

    @cython.locals(
        n=Py_ssize_t, size="unsigned int", view="const unsigned char[::1]", p="const unsigned char *",
        sview="unsigned char[::1]", scratch="unsigned char *", gpa="unsigned long long", k=Py_ssize_t,
        addr="unsigned long long", length="unsigned int", buffer_id="unsigned int", flags="unsigned int",
    )
    cpdef object reread_packed(self, object memory, object descs)

    @cython.locals(
        size="unsigned int", total="unsigned int", pos="unsigned int", i=Py_ssize_t, chain=Chain,
        iview="unsigned short[::1]", inflight="unsigned short *",
    )
    cdef object _rewind_packed(self, list chains, Py_ssize_t n)

    @cython.locals(size="unsigned int")
    cdef int _check_split(self) except -1
    cdef int _size_scratch(self, unsigned int size) except -1

    @cython.locals(
        size="unsigned int", dbuf=object, abuf=object, ubuf=object,
        doff=Py_ssize_t, aoff=Py_ssize_t, uoff=Py_ssize_t,
        dview="const unsigned char[::1]", aview="const unsigned char[::1]", uview="unsigned char[::1]",
        desc="const unsigned char *", avail="const unsigned char *", used="unsigned char *",
        avail_idx="unsigned int", outstanding="unsigned int", inflight="unsigned int",
        sview="unsigned char[::1]", scratch="unsigned char *",
        count=Py_ssize_t, _k=Py_ssize_t, slot="unsigned int", head="unsigned int", popped=Py_ssize_t,
    )
    cdef int _pop_split(self, object memory, Py_ssize_t budget, list out) except -1

    @cython.locals(
        size="unsigned int", idx="unsigned int", ndesc="unsigned int",
        gpa="unsigned long long", addr="unsigned long long", length="unsigned int",
        flags="unsigned int", nxt="unsigned int",
    )
    cdef Chain _walk_split(self, object memory, unsigned char *scratch, const unsigned char *desc,
                           unsigned int head, unsigned long long slot_gpa)

    @cython.locals(
        size="unsigned int", abuf=object, ubuf=object, aoff=Py_ssize_t, uoff=Py_ssize_t,
        aview="const unsigned char[::1]", uview="unsigned char[::1]", sview="unsigned char[::1]",
        iview="unsigned short[::1]", mview="unsigned char[::1]",
        avail="const unsigned char *", ring="unsigned char *", staged="unsigned char *",
        n=Py_ssize_t, i=Py_ssize_t, last=Py_ssize_t, slot="unsigned int", old="unsigned int",
        used_event="unsigned int", buffer_id="unsigned int", written="unsigned int", complete="unsigned int",
        notify=bint,
    )
    cdef object _push_split(self, object memory, list used)

    @cython.locals(
        size="unsigned int", since="unsigned int", abuf=object, aoff=Py_ssize_t,
        aview="const unsigned char[::1]", avail="const unsigned char *", used_event="unsigned int", owed=bint,
    )
    cdef object _owed_split(self, object memory)

    @cython.locals(
        size="unsigned int", abuf=object, ubuf=object, aoff=Py_ssize_t, uoff=Py_ssize_t,
        aview="const unsigned char[::1]", uview="unsigned char[::1]",
        avail="const unsigned char *", ring="unsigned char *",
    )
    cdef object _notify_split(self, object memory, bint enable)

    @cython.locals(size="unsigned int")
    cdef int _check_packed(self) except -1

    @cython.locals(
        size="unsigned int", dbuf=object, ebuf=object, doff=Py_ssize_t, eoff=Py_ssize_t,
        dview="const unsigned char[::1]", eview="unsigned char[::1]", iview="unsigned short[::1]",
        ring="const unsigned char *", event="unsigned char *", inflight="unsigned short *",
        sview="unsigned char[::1]", scratch="unsigned char *", count=Py_ssize_t,
    )
    cdef int _pop_packed(self, object memory, Py_ssize_t budget, list out) except -1

    @cython.locals(
        size="unsigned int", pos="unsigned int", start="unsigned int", wrap=bint,
        free="unsigned int", count="unsigned int", gpa="unsigned long long",
        addr="unsigned long long", length="unsigned int", buffer_id="unsigned int", flags="unsigned int",
    )
    cdef Chain _walk_packed(self, object memory, unsigned char *scratch, const unsigned char *ring,
                            unsigned short *inflight)

    @cython.locals(
        size="unsigned int", dbuf=object, vbuf=object, doff=Py_ssize_t, voff=Py_ssize_t,
        dview="unsigned char[::1]", vview="const unsigned char[::1]", iview="unsigned short[::1]",
        mview="unsigned char[::1]", sview="unsigned char[::1]", ring="unsigned char *",
        driver="const unsigned char *", inflight="unsigned short *", staged="unsigned char *",
        n=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, last=Py_ssize_t, skip="unsigned int", off=Py_ssize_t,
        buffer_id="unsigned int", written="unsigned int", complete="unsigned int", flags="unsigned int", old=long, new=long, event=long, span=long,
        event_flags="unsigned int", off_wrap="unsigned int", notify=bint,
    )
    cdef object _push_packed(self, object memory, list used)

    @cython.locals(event_flags="unsigned int", off_wrap="unsigned int", new=long, event=long, span=long)
    cdef bint _packed_wants(self, const unsigned char *driver, unsigned int size, long old) noexcept

    @cython.locals(position="unsigned int")
    cdef long _signalled_lap(self, unsigned int size) noexcept

    @cython.locals(span=long, lap=long)
    cdef int _clamp_signalled(self, unsigned int size, long new) noexcept

    @cython.locals(
        size="unsigned int", vbuf=object, voff=Py_ssize_t, vview="const unsigned char[::1]",
        driver="const unsigned char *", new=long, old=long, owed=bint,
    )
    cdef object _owed_packed(self, object memory)

    @cython.locals(
        size="unsigned int", dbuf=object, ebuf=object, doff=Py_ssize_t, eoff=Py_ssize_t,
        dview="const unsigned char[::1]", eview="unsigned char[::1]",
        ring="const unsigned char *", event="unsigned char *",
    )
    cdef object _notify_packed(self, object memory, bint enable)

    @cython.locals(
        tbuf=object, toff=Py_ssize_t, tmem="const unsigned char *",
        entries="unsigned int", j="unsigned int", steps="unsigned int", addr="unsigned long long",
        blen="unsigned int", ignored_id="unsigned int", flags="unsigned int", nxt="unsigned int",
    )
    cdef int _walk_indirect(self, object memory, unsigned char *scratch, unsigned long long table,
                            unsigned int length, unsigned int index, unsigned long long gpa,
                            bint packed) except -1

    cdef int _begin(self) except -1
    cdef int _add(self, unsigned char *scratch, unsigned long long addr, unsigned int length, unsigned int write,
                  unsigned int index, unsigned long long gpa) except -1

    @cython.locals(chain=Chain)
    cdef Chain _finish(self, unsigned char *scratch, unsigned int head, unsigned int ndesc, unsigned int pos)

    @cython.locals(
        size="unsigned int", expected="unsigned int", marked=Py_ssize_t, i=Py_ssize_t,
        item=object, written=object, length="unsigned int", complete=bint, buffer_id=Py_ssize_t, chain=Chain,
    )
    cdef int _stage(self, list used, Py_ssize_t n, unsigned char *staged, unsigned short *inflight,
                    unsigned char *mark) except -1

    @cython.locals(last=Py_ssize_t)
    cdef Py_ssize_t _run_end(self, const unsigned char *staged, Py_ssize_t i, Py_ssize_t n) noexcept
