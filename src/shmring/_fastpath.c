/* shmring._fastpath: the per-frame steps that Python makes too slow, in C.
 *
 *   _publisher.c  Publisher: a writer's write() and claim(): the exclusive writer's, and the
 *                 multi-producer sequencer of several writers (shared mode, block policy).
 *   settle()      (here) the repair of a sequenced ring: dead writers' numbers, head.
 *   reclaim()     (here) the reclaim (_publisher.c, shmring_reclaim) for Python, which runs it
 *                 under the header lock; the exclusive writer runs the same one lock-free.
 *   load_word(), store_word(), wake()  (here) Python's lock-free look at a shared word
 *                 (acquire), its ordered store of one that lock-free participants load
 *                 (seq_cst), and its wake-up of a futex word's sleepers (bump, FUTEX_WAKE).
 *   _taker.c      Taker: an own-group block reader's taking of (and one sleep for) the next
 *                 frame, and FrameBase, the fields of shmring.Frame, so that a Frame is built
 *                 without running Python.
 *
 * Rules, for every file: no offset is computed here. The word indices and flags come from
 * shmring_layout.h, generated from _layout.py (python -m shmring._layout_header); the Python
 * side hands over the memoryviews that _layout.Views made and the ring's geometry (slots,
 * buffers, descriptor words, ...), which the header cannot know. An object holds buffer
 * exports of the mappings those views live in, so its raw pointers stay valid until its
 * close(). Anything out of the ordinary makes an object give up with nothing
 * changed, and Python's general path does the work or raises the error; the reclaim, which
 * has no general path, raises RingCorrupted itself (nothing changed). An object is used
 * by one thread at a time, like the handle it belongs to: where it lets go of the GIL, a
 * second thread entering it (or closing it) meanwhile gets HandleInUse (a RuntimeError).
 *
 * Theory: each Python step costs tens of nanoseconds warm and several times that right
 * after a sleep, when caches are cold; a 64-byte frame's whole budget is a few Python
 * steps, and a sleeping reader's wake-up is judged against the kernel's own, which Python's
 * steps would add to (docs/performance.md).
 */
#include "_fastpath.h"

#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

PyObject *shmring_ring_corrupted;
PyObject *shmring_handle_in_use;

uint64_t *shmring_word_view(PyObject *view, const Py_buffer *within, const char *owner,
                            const char *what, uint64_t words) {
    Py_buffer b;
    if (PyObject_GetBuffer(view, &b, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    uintptr_t start = (uintptr_t)within->buf, first = (uintptr_t)b.buf;
    int fits = first >= start && first + (uintptr_t)b.len <= start + (uintptr_t)within->len &&
               (first & 7) == 0 && (uint64_t)b.len / 8 >= words;
    PyBuffer_Release(&b);
    if (!fits) {
        PyErr_Format(PyExc_ValueError, "%s: the %s view is misplaced, misaligned or too short",
                     owner, what);
        return NULL;
    }
    return (uint64_t *)first;
}

void shmring_futex_wake_all(uint64_t *word) {
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

int shmring_u64(PyObject *object, void *address) {
    unsigned long long value = PyLong_AsUnsignedLongLong(object);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        return 0;
    }
    *(unsigned long long *)address = value;
    return 1;
}

/* settle(control, descriptors, holes, *, slots, descriptor_words): the repair of a sequenced
 * ring (shared mode, block policy), run under the header lock while live writers go on
 * without it. Publish every number in `holes` (claimed by writers that died) as a skip, then
 * move C_HEAD over what is published, with the same compare-and-swap the writers use
 * (_publisher.c, help_head). Returns the new head. */
static PyObject *settle(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"control", "descriptors", "holes", "slots", "descriptor_words",
                               NULL};
    PyObject *control_view, *descriptors_view, *holes;
    unsigned long long slots;
    Py_ssize_t descriptor_words;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO!$O&n:settle", keywords, &control_view,
                                     &descriptors_view, &PyList_Type, &holes, shmring_u64,
                                     &slots, &descriptor_words)) {
        return NULL;
    }
    Py_buffer control, descriptors;
    if (PyObject_GetBuffer(control_view, &control, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(descriptors_view, &descriptors, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&control);
        return NULL;
    }
    uint64_t table_words;
    int fits = slots > 0 && descriptor_words >= SHMRING_D_META_BYTE_OFFSET / 8 &&
               !__builtin_mul_overflow(slots, (uint64_t)descriptor_words, &table_words) &&
               (uint64_t)control.len / 8 >= SHMRING_CONTROL_WORDS &&
               (uint64_t)descriptors.len / 8 >= table_words &&
               ((uintptr_t)control.buf & 7) == 0 && ((uintptr_t)descriptors.buf & 7) == 0;
    PyObject *result = NULL;
    if (!fits) {
        PyErr_SetString(PyExc_ValueError, "settle: impossible ring geometry");
        goto done;
    }
    uint64_t *table = descriptors.buf, *head_word = (uint64_t *)control.buf + SHMRING_C_HEAD;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(holes); i++) { /* all checked before any store */
        uint64_t seq = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(holes, i));
        if (seq == (uint64_t)-1 && PyErr_Occurred()) {
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(holes); i++) {
        uint64_t seq = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(holes, i));
        uint64_t *descriptor = table + (seq % slots) * (uint64_t)descriptor_words;
        store(&descriptor[SHMRING_D_FLAGS], SHMRING_DF_SKIP);
        __atomic_store_n(&descriptor[SHMRING_D_SEQ], seq, __ATOMIC_SEQ_CST);
    }
    uint64_t head = __atomic_load_n(head_word, __ATOMIC_SEQ_CST);
    while (head < SHMRING_SEQ_LIMIT) {
        const uint64_t *descriptor = table + (head % slots) * (uint64_t)descriptor_words;
        if (__atomic_load_n(&descriptor[SHMRING_D_SEQ], __ATOMIC_SEQ_CST) != head) {
            break;
        }
        if (__atomic_compare_exchange_n(head_word, &head, head + 1, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
            head++;
        }
    }
    result = PyLong_FromUnsignedLongLong(head);
done:
    PyBuffer_Release(&control);
    PyBuffer_Release(&descriptors);
    return result;
}

/* reclaim(*, header, control, descriptors, freelist, reader_records, group_records, slots,
 * descriptor_words, nbuffers, max_readers, name) -> the new free count: the ring's one
 * reclaim (_publisher.c, shmring_reclaim) over the views _layout.Views made of `header`, for
 * a caller that holds the header lock (Participant.reclaim). It raises RingCorrupted, having
 * changed nothing, on a damaged window or free list. */
static PyObject *reclaim(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"header", "control", "descriptors", "freelist",
                               "reader_records", "group_records", "slots", "descriptor_words",
                               "nbuffers", "max_readers", "name", NULL};
    PyObject *header_object, *control, *descriptors, *freelist, *readers, *groups;
    ShmringReclaim ring;
    unsigned long long slots, descriptor_words, nbuffers, max_readers;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OOOOOOO&O&O&O&U:reclaim", keywords,
                                     &header_object, &control, &descriptors, &freelist, &readers,
                                     &groups, shmring_u64, &slots, shmring_u64,
                                     &descriptor_words, shmring_u64, &nbuffers, shmring_u64,
                                     &max_readers, &ring.name)) {
        return NULL;
    }
    uint64_t table_words, record_table_words;
    if (slots == 0 || nbuffers == 0 || max_readers == 0 ||
        descriptor_words < SHMRING_D_META_BYTE_OFFSET / 8 ||
        __builtin_mul_overflow(slots, descriptor_words, &table_words) ||
        __builtin_mul_overflow(max_readers, (uint64_t)SHMRING_RECORD_WORDS,
                               &record_table_words)) {
        PyErr_SetString(PyExc_ValueError, "reclaim: impossible ring geometry");
        return NULL;
    }
    Py_buffer header;
    if (PyObject_GetBuffer(header_object, &header, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    const char *owner = "reclaim";
    if ((ring.control = shmring_word_view(control, &header, owner, "control",
                                          SHMRING_CONTROL_WORDS)) &&
        (ring.descriptors =
             shmring_word_view(descriptors, &header, owner, "descriptors", table_words)) &&
        (ring.freelist = shmring_word_view(freelist, &header, owner, "freelist", nbuffers)) &&
        (ring.reader_records = shmring_word_view(readers, &header, owner, "reader records",
                                                 record_table_words)) &&
        (ring.group_records = shmring_word_view(groups, &header, owner, "group records",
                                                record_table_words))) {
        ring.slots = slots;
        ring.nbuffers = nbuffers;
        ring.descriptor_words = descriptor_words;
        ring.max_readers = max_readers;
        long long count = shmring_reclaim(&ring);
        result = count < 0 ? NULL : PyLong_FromLongLong(count);
    }
    PyBuffer_Release(&header);
    return result;
}

/* The arguments (view, index) of `function`: the address of word `index` of a memoryview of
 * u64 words (writable: _layout.Views makes them so) in `*word` and the index in `*index`,
 * and 0, the view's export held in `*view` (the caller releases it); or -1 with an exception
 * set. */
static int word_arguments(const char *function, PyObject *const *args, Py_ssize_t nargs,
                          Py_buffer *view, uint64_t **word, Py_ssize_t *index) {
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s takes 2 arguments, got %zd", function, nargs);
        return -1;
    }
    *index = PyLong_AsSsize_t(args[1]);
    if ((*index == -1 && PyErr_Occurred()) ||
        PyObject_GetBuffer(args[0], view, PyBUF_WRITABLE) < 0) {
        return -1;
    }
    if (*index < 0 || *index >= view->len / 8 || ((uintptr_t)view->buf & 7) != 0) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_IndexError, "word %zd is outside the view (or the view is misaligned)",
                     *index);
        return -1;
    }
    *word = (uint64_t *)view->buf + *index;
    return 0;
}

/* load_word(view, index): the u64 word `index` of `view`, with an acquire load. How Python
 * reads a shared word without the header lock (a futex word's value before it looks, the
 * end-of-stream flags, counts it only reports or decides a nap by): acquire, so that what
 * it looks at next (in C, with acquire loads too) is at least as new as the word, which a
 * plain CPython read does not promise on aarch64. */
static PyObject *load_word(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t index;
    Py_buffer view;
    uint64_t *word;
    if (word_arguments("load_word", args, nargs, &view, &word, &index) < 0) {
        return NULL;
    }
    uint64_t value = load(word);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(value);
}

/* store_word(view, index, value): store `value` in u64 word `index` of `view`, seq_cst. How
 * Python, under the header lock, writes a word that lock-free participants may load
 * meanwhile in a set order (a repair's skips and its moves of head and tail: docs/FORMAT.md,
 * "Memory ordering"), which plain CPython stores do not keep on aarch64. */
static PyObject *store_word(PyObject *Py_UNUSED(module), PyObject *const *args,
                            Py_ssize_t nargs) {
    Py_ssize_t index;
    Py_buffer view;
    uint64_t *word;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "store_word takes 3 arguments, got %zd", nargs);
        return NULL;
    }
    uint64_t value = PyLong_AsUnsignedLongLong(args[2]);
    if ((value == (uint64_t)-1 && PyErr_Occurred()) ||
        word_arguments("store_word", args, 2, &view, &word, &index) < 0) {
        return NULL;
    }
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* wake(control, index): bump control word `index` (a futex word: C_FRAMES, C_SPACE) and wake
 * every sleeper on it, as the per-frame paths in C do (shmring_bump_and_wake, whose
 * compare-and-swap is also the full barrier between what the caller stored before, a release
 * or a close, and the wake-up). */
static PyObject *wake(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t index;
    Py_buffer view;
    uint64_t *word;
    if (word_arguments("wake", args, nargs, &view, &word, &index) < 0) {
        return NULL;
    }
    if (index != SHMRING_C_FRAMES && index != SHMRING_C_SPACE) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "wake: word %zd is not a futex word", index);
        return NULL;
    }
    shmring_bump_and_wake(word);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyMethodDef fastpath_functions[] = {
    {"load_word", (PyCFunction)(void (*)(void))load_word, METH_FASTCALL,
     "load_word(view, index) -> word index of a u64 view, loaded with acquire (_fastpath.c)."},
    {"store_word", (PyCFunction)(void (*)(void))store_word, METH_FASTCALL,
     "store_word(view, index, value): store a u64 word of a view, seq_cst (_fastpath.c)."},
    {"wake", (PyCFunction)(void (*)(void))wake, METH_FASTCALL,
     "wake(control, index): bump futex word index (C_FRAMES, C_SPACE) and wake its sleepers."},
    {"settle", (PyCFunction)(void (*)(void))settle, METH_VARARGS | METH_KEYWORDS,
     "settle(control, descriptors, holes, *, ...) -> head: publish holes as skips, move head "
     "(see _fastpath.c)."},
    {"reclaim", (PyCFunction)(void (*)(void))reclaim, METH_VARARGS | METH_KEYWORDS,
     "reclaim(*, header, control, ...) -> free count: the reclaim, under the header lock "
     "(see _fastpath.c)."},
    {NULL, NULL, 0, NULL},
};

static int fastpath_exec(PyObject *module) {
    if (shmring_ring_corrupted == NULL) { /* one interpreter: kept for the process's life */
        PyObject *errors = PyImport_ImportModule("shmring._errors");
        if (errors == NULL) {
            return -1;
        }
        shmring_ring_corrupted = PyObject_GetAttrString(errors, "RingCorrupted");
        shmring_handle_in_use = PyObject_GetAttrString(errors, "HandleInUse");
        Py_DECREF(errors);
        if (shmring_ring_corrupted == NULL || shmring_handle_in_use == NULL) {
            Py_CLEAR(shmring_ring_corrupted);
            Py_CLEAR(shmring_handle_in_use);
            return -1;
        }
    }
    return shmring_add_publisher(module) < 0 || shmring_add_taker(module) < 0 ? -1 : 0;
}

static PyModuleDef_Slot fastpath_slots[] = {
    {Py_mod_exec, fastpath_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* The types are static: one interpreter only. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmring._fastpath",
    .m_doc = "Per-frame steps of the writer and reader in C (see the comment atop _fastpath.c).",
    .m_size = 0,
    .m_slots = fastpath_slots,
    .m_methods = fastpath_functions,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    return PyModuleDef_Init(&fastpath_module);
}
